import { setTimeout as sleep } from "node:timers/promises";
import type SqliteDatabase from "better-sqlite3";
import { asDatabaseError, DatabaseError, isSqliteBusy } from "./errors.js";

/** A statement and its parameters, as Kysely compiles them. */
export interface SqlText {
  readonly sql: string;
  readonly parameters: readonly unknown[];
}

/** Committed batches and the transactions in them. */
export interface SessionStats {
  readonly read: { readonly batches: number; readonly transactions: number };
  readonly write: { readonly batches: number; readonly transactions: number };
}

interface Job {
  readonly work: () => Promise<unknown>;
  /** False for a job that only reads: a batch of such jobs takes no write lock. */
  readonly writes: boolean;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
  result?: unknown;
}

/** Write transactions committed together at most; bounds how long one batch holds the lock. */
const MAX_BATCH = 64;

/** How often a write batch tries again for the write lock that another process holds. */
const LOCK_POLL_MS = 5;

/** Each reading statement's column names, taken at its first run (see readRows). */
const columnNames = new WeakMap<SqliteDatabase.Statement, readonly string[]>();

function namesOf(statement: SqliteDatabase.Statement): readonly string[] {
  const names = statement.columns().map((column) => column.name);
  columnNames.set(statement, names);
  return names;
}

/**
 * A reading statement's rows as objects keyed by column name, as better-sqlite3's `all` makes
 * them, but built here from its raw rows (arrays of values). better-sqlite3 builds each object
 * through V8's C++ API, a new string for every column name and a generic property store for every
 * value; that was 20,000 instructions of a request's 238,000 at the speed issue's mix, about half
 * of what SQLite itself spent (README, Speed decisions). The statement is shared (Kysely runs it
 * too), so raw mode is set for this call only. The names are taken once per statement: they change
 * only if its text selects `*` and the table's columns change. A column added or dropped changes
 * their number, which is checked; one renamed under a `select *` would keep its old name here (the
 * service's statements name their columns, and nothing renames one while it runs).
 */
function readRows(statement: SqliteDatabase.Statement, parameters: readonly unknown[]): unknown[] {
  statement.raw(true);
  let rows: unknown[][];
  try {
    rows = statement.all(parameters) as unknown[][];
  } finally {
    statement.raw(false);
  }
  const first = rows[0];
  if (first === undefined) {
    return rows;
  }
  let names = columnNames.get(statement);
  if (names === undefined || names.length !== first.length) {
    names = namesOf(statement);
  }
  const objects: Record<string, unknown>[] = [];
  for (const values of rows) {
    const object: Record<string, unknown> = {};
    for (let c = 0; c < names.length; c++) {
      object[names[c] as string] = values[c];
    }
    objects.push(object);
  }
  return objects;
}

/**
 * The one SQLite connection of the process, used directly (better-sqlite3 is synchronous), with
 * group commit.
 *
 * Transactions queue up and run in batches, one turn of the event loop's worth at a time: one
 * BEGIN, each queued transaction in turn, one COMMIT. A transaction's promise settles only after
 * the COMMIT of its batch, so nothing is acknowledged before it is committed. The COMMIT is most
 * of a small write transaction's cost (it writes the WAL), and the transactions that reach the
 * database in one turn share it.
 *
 * - If one transaction fails, the batch rolls back: that one rejects with its error, and the
 *   others run again in the next batch, from the start, as after a deadlock.
 * - If the COMMIT of several fails (a deferred constraint, an I/O error), each runs again alone,
 *   so that only the one at fault fails.
 * - Reads run in batches too, first and apart from the writes, under a plain BEGIN (no write
 *   lock: other processes on the file never hold them up). Outside a transaction each read
 *   would begin and end a WAL read transaction of its own (two lock calls), which cost more than
 *   the read; and a read on this connection while a write batch is open would see rows not
 *   committed yet.
 *
 * The contract of a transaction's `work`: it uses only this session's synchronous `run`, awaits
 * nothing else (so a batch ends within the turn it started in), never queues another transaction
 * itself (it would wait for its own batch), and can run more than once.
 */
export class SqliteSession {
  private readonly queue: Job[] = [];
  /** Settles when the queue is empty again; null when nothing is queued. */
  private draining: Promise<void> | null = null;
  private readonly counts = {
    read: { batches: 0, transactions: 0 },
    write: { batches: 0, transactions: 0 },
  };
  /**
   * While set, no write batch starts (a checkpoint runs elsewhere). Reads go on meanwhile: they
   * append nothing to the WAL, so the checkpoint still reaches its end.
   */
  private paused = false;
  /** Set while the drain waits for `resume` or a read, whichever comes first. */
  private wake: (() => void) | null = null;
  /** The batch running now, if any. */
  private running: Promise<void> | null = null;
  private closed = false;
  /** When the write batches began finding the write lock held by another process; else null. */
  private busySince: number | null = null;

  /**
   * `lockTimeoutMs` > 0: a write batch that finds the file's write lock held by another process
   * waits for it up to that long off the event loop (trying again every few milliseconds, read
   * batches going on meanwhile), then fails as busy. With 0 it fails at once, unless the
   * connection's own `busy_timeout` waits, which holds the event loop: nothing else, not even
   * /healthz, was answered while another process held the lock.
   */
  constructor(
    private readonly prepare: (sql: string) => SqliteDatabase.Statement,
    private readonly onStatement?: (
      sql: string,
      parameters: readonly unknown[],
      pipelined: boolean,
    ) => void,
    private readonly lockTimeoutMs = 0,
  ) {}

  /** Runs one statement; returns its rows (none for a statement that returns no rows). */
  run(query: SqlText): unknown[] {
    this.onStatement?.(query.sql, query.parameters, false);
    const statement = this.prepare(query.sql);
    if (statement.reader) {
      return readRows(statement, query.parameters);
    }
    statement.run(query.parameters);
    return [];
  }

  /**
   * Runs `work` in a write transaction shared with the others queued in this turn of the event
   * loop; resolves with its result after COMMIT. See the class comment for what `work` may do.
   */
  write<T>(work: () => Promise<T>): Promise<T> {
    return this.enqueue(work, true);
  }

  /** Runs `read` (statements that change nothing) in this turn's batch; resolves after it. */
  read<T>(read: () => T): Promise<T> {
    return this.enqueue(() => Promise.resolve(read()), false);
  }

  /**
   * SQLite's `PRAGMA data_version`: a number that moves when another connection (another process
   * on the file) has committed since the connection last looked, and never for this connection's
   * own commits. Outside a transaction it reads the file as it is now. Not a statement of any
   * request, so not reported to `onStatement`: the in-process cache calls it once per turn of
   * the event loop (cache/memory.cache.ts).
   */
  dataVersion(): number {
    return this.prepare("pragma data_version").pluck().get() as number;
  }

  /** Resolves once every queued transaction has settled (before closing the connection). */
  async flush(): Promise<void> {
    while (this.draining !== null) {
      await this.draining;
    }
  }

  /** Batches committed and the transactions in them since the start, for reads and writes apart. */
  stats(): SessionStats {
    return {
      read: { ...this.counts.read },
      write: { ...this.counts.write },
    };
  }

  /** Lets the running batch finish and starts no write batch until `resume` (reads go on). */
  async pause(): Promise<void> {
    this.paused = true;
    await this.running;
  }

  resume(): void {
    this.paused = false;
    this.wake?.();
  }

  /** From now on every transaction rejects: the connection is being closed. */
  close(): void {
    this.closed = true;
  }

  private enqueue<T>(work: () => Promise<T>, writes: boolean): Promise<T> {
    if (this.closed) {
      return Promise.reject(new DatabaseError("the database is closed"));
    }
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ work, writes, resolve: resolve as (value: unknown) => void, reject });
      if (!writes) {
        this.wake?.();
      }
      this.draining ??= new Promise((drained) => {
        setImmediate(() => void this.drain().finally(drained));
      });
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const writes = this.queue.every((job) => job.writes);
        if (writes && this.paused) {
          // Paused: only a read may start, so wait for `resume` or for a read.
          await new Promise<void>((woken) => {
            this.wake = woken;
          });
          this.wake = null;
          continue;
        }
        this.running = this.runBatch(this.nextBatch(writes));
        await this.running;
        this.running = null;
      }
    } finally {
      this.running = null;
      this.draining = null;
    }
  }

  /**
   * The queued reads, if there are any, else the queued writes (at most MAX_BATCH): `writes`
   * tells which. Reads go first and apart: under BEGIN IMMEDIATE they would wait for other
   * processes' write locks.
   */
  private nextBatch(writes: boolean): Job[] {
    const batch: Job[] = [];
    for (let i = 0; i < this.queue.length && batch.length < MAX_BATCH;) {
      if (this.queue[i]?.writes === writes) {
        batch.push(...this.queue.splice(i, 1));
      } else {
        i++;
      }
    }
    return batch;
  }

  private async runBatch(jobs: Job[]): Promise<void> {
    if (!(await this.attempt(jobs))) {
      // COMMIT failed (a deferred constraint, an I/O error): run each alone, so that only the
      // transaction at fault fails.
      for (const job of jobs) {
        await this.attempt([job]);
      }
    }
  }

  /**
   * Runs the jobs in one transaction and settles them, or puts them back in the queue; returns
   * false, settling none, only when the COMMIT of several failed.
   */
  private async attempt(jobs: Job[]): Promise<boolean> {
    const writes = jobs.some((job) => job.writes);
    try {
      this.begin(writes);
    } catch (error) {
      if (writes && this.lockTimeoutMs > 0 && isSqliteBusy(error)) {
        const now = performance.now();
        this.busySince ??= now;
        if (now - this.busySince < this.lockTimeoutMs) {
          // Another process holds the write lock: try again soon, the event loop free meanwhile.
          this.queue.unshift(...jobs);
          await sleep(LOCK_POLL_MS);
          return true;
        }
      }
      this.busySince = null;
      const reason = asDatabaseError(error, "beginning a transaction");
      for (const job of jobs) {
        job.reject(reason);
      }
      return true;
    }
    if (writes) {
      this.busySince = null;
    }
    for (const job of jobs) {
      try {
        job.result = await job.work();
      } catch (error) {
        this.rollback();
        job.reject(error);
        this.queue.unshift(...jobs.filter((other) => other !== job));
        return true;
      }
    }
    try {
      this.run({ sql: "commit", parameters: [] });
    } catch (error) {
      this.rollback();
      const reason = asDatabaseError(error, "committing");
      if (jobs.length > 1) {
        return false;
      }
      for (const job of jobs) {
        job.reject(reason);
      }
      return true;
    }
    const counts = writes ? this.counts.write : this.counts.read;
    counts.batches++;
    counts.transactions += jobs.length;
    for (const job of jobs) {
      job.resolve(job.result);
    }
    return true;
  }

  /**
   * BEGIN for reads (in WAL mode they never wait for a writer), BEGIN IMMEDIATE for writes. With
   * a `lockTimeoutMs`, the write lock is asked for without the connection's busy wait.
   */
  private begin(writes: boolean): void {
    if (!writes || this.lockTimeoutMs === 0) {
      this.run({ sql: writes ? "begin immediate" : "begin", parameters: [] });
      return;
    }
    this.prepare("pragma busy_timeout = 0").get();
    try {
      this.run({ sql: "begin immediate", parameters: [] });
    } finally {
      this.prepare(`pragma busy_timeout = ${this.lockTimeoutMs}`).get();
    }
  }

  private rollback(): void {
    try {
      this.run({ sql: "rollback", parameters: [] });
    } catch {
      // SQLite rolls back by itself after some errors (SQLITE_FULL): nothing is left to undo.
    }
  }
}
