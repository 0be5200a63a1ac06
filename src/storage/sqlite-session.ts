import type SqliteDatabase from "better-sqlite3";
import { DatabaseError } from "./errors.js";

/** A statement and its parameters, as Kysely compiles them. */
export interface SqlText {
  readonly sql: string;
  readonly parameters: readonly unknown[];
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

function failure(doing: string, error: unknown): DatabaseError {
  const detail = error instanceof Error ? error.message : String(error);
  return new DatabaseError(`${doing}: ${detail}`, { cause: error });
}

/**
 * The one SQLite connection of the process, used directly (better-sqlite3 is synchronous), with
 * group commit.
 *
 * Transactions queue up and run in batches, one per turn of the event loop: one BEGIN, each
 * queued transaction in turn, one COMMIT. A transaction's promise settles only after the COMMIT
 * of its batch, so nothing is acknowledged before it is committed. The COMMIT is most of a small
 * write transaction's cost (it writes the WAL), and the transactions that reach the database in
 * one turn share it. If one transaction fails, the batch rolls back: that one rejects with its
 * error and the others run again in the next batch, from the start, as after a deadlock.
 *
 * Reads run in the batches too. Outside a transaction, each SQLite read would begin and end a
 * WAL read transaction of its own (two lock calls), which cost more than the read; and a read
 * on this connection while a batch is open would see rows not committed yet. A batch of reads
 * alone begins with BEGIN (no write lock, so other processes on the file are not held up); a
 * batch with a write, with BEGIN IMMEDIATE.
 */
export class SqliteSession {
  private readonly queue: Job[] = [];
  /** Settles when the queue is empty again; null when nothing is queued. */
  private draining: Promise<void> | null = null;
  private batches = 0;
  private transactions = 0;
  /** While set, no batch starts (a checkpoint runs elsewhere); `open` lets them start again. */
  private gate: { readonly passed: Promise<void>; readonly open: () => void } | null = null;
  /** The batch running now, if any. */
  private running: Promise<void> | null = null;

  constructor(
    private readonly prepare: (sql: string) => SqliteDatabase.Statement,
    private readonly onStatement?: (sql: string, parameters: readonly unknown[]) => void,
  ) {}

  /** Runs one statement; returns its rows (none for a statement that returns no rows). */
  run(query: SqlText): unknown[] {
    this.onStatement?.(query.sql, query.parameters);
    const statement = this.prepare(query.sql);
    if (statement.reader) {
      return statement.all(query.parameters);
    }
    statement.run(query.parameters);
    return [];
  }

  /**
   * Runs `work` in a write transaction shared with the others queued in this turn of the event
   * loop; resolves with its result after COMMIT. `work` may run more than once (see the class
   * comment) and must use only this session's synchronous `run`.
   */
  write<T>(work: () => Promise<T>): Promise<T> {
    return this.enqueue(work, true);
  }

  /** Runs `read` (statements that change nothing) in this turn's batch; resolves after it. */
  read<T>(read: () => T): Promise<T> {
    return this.enqueue(() => Promise.resolve(read()), false);
  }

  /** Resolves once every queued transaction has settled (before closing the connection). */
  async flush(): Promise<void> {
    while (this.draining !== null) {
      await this.draining;
    }
  }

  /** Batches committed and transactions in them, since the start (for the average batch size). */
  stats(): { readonly batches: number; readonly transactions: number } {
    return { batches: this.batches, transactions: this.transactions };
  }

  /** Lets the running batch finish and starts no other until `resume`. */
  async pause(): Promise<void> {
    if (this.gate === null) {
      let open = (): void => undefined;
      const passed = new Promise<void>((resolve) => {
        open = resolve;
      });
      this.gate = { passed, open };
    }
    await this.running;
  }

  resume(): void {
    this.gate?.open();
    this.gate = null;
  }

  private enqueue<T>(work: () => Promise<T>, writes: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ work, writes, resolve: resolve as (value: unknown) => void, reject });
      this.draining ??= new Promise((drained) => {
        setImmediate(() => void this.drain().finally(drained));
      });
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        if (this.gate !== null) {
          await this.gate.passed;
          continue;
        }
        this.running = this.runBatch(this.queue.splice(0, MAX_BATCH));
        await this.running;
        this.running = null;
      }
    } finally {
      this.running = null;
      this.draining = null;
    }
  }

  private async runBatch(jobs: Job[]): Promise<void> {
    try {
      const writes = jobs.some((job) => job.writes);
      this.run({ sql: writes ? "begin immediate" : "begin", parameters: [] });
    } catch (error) {
      const reason = failure("beginning a transaction", error);
      for (const job of jobs) {
        job.reject(reason);
      }
      return;
    }
    for (const job of jobs) {
      try {
        job.result = await job.work();
      } catch (error) {
        this.rollback();
        job.reject(error);
        this.queue.unshift(...jobs.filter((other) => other !== job));
        return;
      }
    }
    try {
      this.run({ sql: "commit", parameters: [] });
    } catch (error) {
      this.rollback();
      const reason = failure("committing", error);
      for (const job of jobs) {
        job.reject(reason);
      }
      return;
    }
    this.batches++;
    this.transactions += jobs.length;
    for (const job of jobs) {
      job.resolve(job.result);
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
