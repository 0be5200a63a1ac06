import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import SqliteDatabase from "better-sqlite3";
import {
  CompiledQuery,
  Kysely,
  MysqlDialect,
  PostgresDialect,
  SqliteAdapter,
  SqliteDialect,
  SqliteDriver,
} from "kysely";
import type {
  DatabaseConnection,
  Dialect,
  DialectAdapter,
  Driver,
  MysqlPool as KyselyMysqlPool,
  SqliteDialectConfig,
} from "kysely";
import type { Pool as MysqlPool } from "mysql2";
import type pg from "pg";
import type { DB } from "./schema.js";
import { startCheckpointer } from "./sqlite-checkpointer.js";
import type { Checkpointer } from "./sqlite-checkpointer.js";
import { SqliteSession } from "./sqlite-session.js";

export type DialectName = "sqlite" | "mysql" | "postgres";

export type DatabaseTarget =
  | { readonly dialect: "sqlite"; readonly path: string }
  | { readonly dialect: "mysql"; readonly url: string }
  | { readonly dialect: "postgres"; readonly url: string };

export interface DatabaseOptions {
  readonly poolSize: number;
  /** How long a statement may wait for a row or advisory lock before the attempt is retried. */
  readonly lockTimeoutMs: number;
  /** SQLite only: FULL syncs the WAL at every COMMIT; NORMAL (default) at checkpoints. */
  readonly sqliteSynchronous?: "full" | "normal";
  /**
   * Told every statement sent, with its parameters (for tests and diagnostics). `pipelined`: it
   * went out behind statements of its connection not yet answered, in their round trip.
   */
  readonly onStatement?: (sql: string, parameters: readonly unknown[], pipelined: boolean) => void;
  /** Told when SQLite's checkpointer thread fails; the connection then checkpoints by itself. */
  readonly onCheckpointError?: (error: Error) => void;
  /**
   * MySQL/MariaDB and PostgreSQL: how long a statement waits to open a connection, or for one of
   * the pool's to be free, before it fails (5000 by default).
   */
  readonly connectionTimeoutMs?: number;
  /** Told when the server drops an idle pooled connection (PostgreSQL); nothing is lost. */
  readonly onIdleConnectionError?: (error: Error) => void;
  /**
   * SQLite only: the caller only reads, so the file is left as it is (`sqlite_stat4` is not
   * dropped; see dropSampleStatistics).
   */
  readonly readOnly?: boolean;
  /**
   * Told when SQLite's `sqlite_stat4` could not be dropped (a read-only file, a write lock held
   * past the lock timeout); the database opens anyway, with statements planned at each execution.
   */
  readonly onSampleStatisticsKept?: (error: Error) => void;
}

/** Connections of a pool: open and busy, open and idle, and requests waiting for one. */
export interface PoolStats {
  readonly inUse: number;
  readonly idle: number;
  readonly waiting: number;
}

/** An open database: the Kysely instance and the dialect it speaks. */
export interface Database {
  readonly db: Kysely<DB>;
  readonly dialect: DialectName;
  readonly options: DatabaseOptions;
  /** The target without credentials, for logs and error lines. */
  readonly description: string;
  /** SQLite: the connection, for the contact store's group commit; null on the servers. */
  readonly sqlite: SqliteSession | null;
  /** PostgreSQL: pinned connections that pipeline statements; null on the others. */
  readonly postgres: PostgresPipelines | null;
  /** The connection pool right now (SQLite: one connection, reported as idle). */
  poolStats(): PoolStats;
  destroy(): Promise<void>;
}

/**
 * Parses a DATABASE_URL: `sqlite:PATH`, `sqlite::memory:`, `mysql://…` (also `mariadb://`) or
 * `postgres://…` (also `postgresql://`). Throws an Error saying what is wrong.
 */
export function parseDatabaseUrl(value: string): DatabaseTarget {
  if (value.startsWith("sqlite:")) {
    const path = value.slice("sqlite:".length).replace(/^\/\//, "");
    if (path === "") {
      throw new Error("sqlite: needs a path, as in sqlite:./data/contacts.db or sqlite::memory:");
    }
    return { dialect: "sqlite", path };
  }
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error("is not a URL (sqlite:PATH, mysql://… or postgres://…)");
  }
  if (url.hostname === "" || url.pathname.length <= 1) {
    throw new Error("needs a host and a database name");
  }
  switch (url.protocol) {
    case "mysql:":
    case "mariadb:":
      url.protocol = "mysql:";
      return { dialect: "mysql", url: url.toString() };
    case "postgres:":
    case "postgresql:":
      return { dialect: "postgres", url: url.toString() };
    default:
      throw new Error(`unsupported scheme ${url.protocol.replace(/:$/, "")}`);
  }
}

/** The target as text with any password replaced, safe for logs. */
export function describeTarget(target: DatabaseTarget): string {
  if (target.dialect === "sqlite") {
    return `sqlite:${target.path}`;
  }
  const url = new URL(target.url);
  if (url.password !== "") {
    url.password = "***";
  }
  // The drivers also read a password from the query (`?password=…`).
  for (const name of [...url.searchParams.keys()]) {
    if (name.toLowerCase() === "password") {
      url.searchParams.set(name, "***");
    }
  }
  return url.toString();
}

/** `lockTimeoutMs` in whole seconds, at least 1, for the MySQL/MariaDB settings that take seconds. */
export function lockTimeoutSeconds(options: DatabaseOptions): number {
  return Math.max(1, Math.ceil(options.lockTimeoutMs / 1000));
}

/** Runs one statement; resolves with its rows (and MySQL's insert id) when it is answered. */
export type Send = (query: CompiledQuery) => Promise<{ rows: unknown[]; insertId?: bigint }>;

/**
 * PostgreSQL connections in pipeline mode: `send` writes a statement at once, even while earlier
 * ones of the connection are unanswered, and the server runs them in order, so statements that
 * do not depend on each other's results share one round trip.
 */
export interface PostgresPipelines {
  /** Runs `work` on a connection of the pool, pinned to it until `work` settles. */
  withConnection<T>(work: (send: Send) => Promise<T>): Promise<T>;
}

interface Created {
  readonly dialect: Dialect;
  readonly poolStats: () => PoolStats;
  readonly sqlite?: SqliteSession;
  readonly postgres?: PostgresPipelines;
  /** SQLite: stops the checkpointer and closes the connection; later transactions reject. */
  readonly stop?: () => Promise<void>;
  /** Run after Kysely is destroyed (PostgreSQL: ends the pool if only the pipelines used it). */
  readonly afterDestroy?: () => Promise<void>;
}

/** SQLite: the WAL size at which the checkpointer thread restarts it (pages of 4 KiB). */
const WAL_RESTART_FRAMES = 1000;

/**
 * SQLite: the size the WAL file is cut back to when it restarts, above the size it reaches
 * between two restarts under load (about WAL_RESTART_FRAMES frames), so that it is not cut and
 * grown again at each one.
 */
export const WAL_SIZE_LIMIT_BYTES = WAL_RESTART_FRAMES * 4 * 4096;

/** The default of `DatabaseOptions.connectionTimeoutMs`. */
const CONNECTION_TIMEOUT_MS = 5000;

/** mysql2 keeps its pool's queues in fields it does not type; read their lengths defensively. */
function mysqlPoolStats(pool: unknown): PoolStats {
  if (pool === null) {
    return { inUse: 0, idle: 0, waiting: 0 };
  }
  const queues = pool as {
    _allConnections?: { length: number };
    _freeConnections?: { length: number };
    _connectionQueue?: { length: number };
  };
  const all = queues._allConnections?.length ?? 0;
  const free = queues._freeConnections?.length ?? 0;
  return { inUse: all - free, idle: free, waiting: queues._connectionQueue?.length ?? 0 };
}

function createDialect(target: DatabaseTarget, options: DatabaseOptions): Created {
  const connectionTimeoutMs = options.connectionTimeoutMs ?? CONNECTION_TIMEOUT_MS;
  switch (target.dialect) {
    case "sqlite": {
      if (target.path !== ":memory:") {
        mkdirSync(dirname(target.path), { recursive: true });
        if (options.readOnly !== true) {
          try {
            dropSampleStatistics(target.path, options.lockTimeoutMs);
          } catch (error) {
            options.onSampleStatisticsKept?.(asError(error));
          }
        }
      }
      const database = new SqliteDatabase(target.path);
      database.pragma("journal_mode = WAL");
      // NORMAL (the default) syncs the WAL at checkpoints, not at every COMMIT: see README.
      database.pragma(`synchronous = ${options.sqliteSynchronous ?? "normal"}`);
      database.pragma("foreign_keys = ON");
      database.pragma(`busy_timeout = ${options.lockTimeoutMs}`);
      // Statement journals and temporary tables in memory, not in files of SQLite's temporary
      // directory: a merge's relink journals every page it changes, and past 64 KiB that went to
      // a file, so a host without a writable temporary directory failed such merges (README).
      database.pragma("temp_store = MEMORY");
      const prepare = statementCache(database);
      const session = new SqliteSession(prepare, options.onStatement, options.lockTimeoutMs);
      let checkpointer: Checkpointer | null = null;
      if (target.path !== ":memory:") {
        // Checkpoints run in a thread of their own; the connection's own, inside COMMIT, are only
        // a fallback (README, Benchmark).
        database.pragma(`wal_autocheckpoint = ${WAL_RESTART_FRAMES * 4}`);
        // A WAL that grew (a long read by another process held every checkpoint back) is cut
        // back to this size when it restarts; SQLite keeps the file at its largest otherwise.
        database.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT_BYTES}`);
        checkpointer = startCheckpointer(session, {
          path: target.path,
          synchronous: options.sqliteSynchronous ?? "normal",
          intervalMs: 100,
          restartFrames: WAL_RESTART_FRAMES,
          onError: (error) => {
            if (database.open) {
              database.pragma(`wal_autocheckpoint = ${WAL_RESTART_FRAMES}`);
            }
            options.onCheckpointError?.(error);
          },
        });
      }
      return {
        dialect: new ImmediateSqliteDialect({
          database: { close: () => database.close(), prepare },
        }),
        poolStats: () => ({ inUse: 0, idle: 1, waiting: 0 }),
        sqlite: session,
        stop: async () => {
          await checkpointer?.stop();
          session.close();
          // Kysely closes it too, but only if it ever used it.
          database.close();
        },
      };
    }
    case "mysql": {
      // The drivers of the servers load only when one is used: together they are about 12 MB of
      // memory that an SQLite process does not need.
      let pool: MysqlPool | null = null;
      return {
        dialect: new MysqlDialect({
          pool: async () => {
            const { createPool } = await import("mysql2");
            pool = createPool({
              uri: target.url,
              connectionLimit: options.poolSize,
              timezone: "Z",
              dateStrings: false,
              supportBigNumbers: true,
              connectTimeout: connectionTimeoutMs,
              enableKeepAlive: true,
              // Per connection; the service sends a handful of fixed texts, and the server's
              // max_prepared_stmt_count is shared by every connection of every client.
              maxPreparedStatements: 64,
            });
            return preparingPool(pool, connectionTimeoutMs);
          },
          onCreateConnection: async (connection) => {
            // READ COMMITTED: every statement sees the latest committed rows, and InnoDB takes no
            // gap locks; correctness comes from the named and row locks (README, Concurrency).
            await connection.executeQuery(
              CompiledQuery.raw("set session transaction isolation level read committed"),
            );
            // UTC, as mysql2 sends and reads times (`timezone: "Z"`): identity_identify measures
            // its own run time with SYSDATE(), which in a zone with daylight saving would be an
            // hour off across the change (migration 0007). The lock timeout bounds the wait for
            // a row lock (innodb_lock_wait_timeout) and for a table's lock (lock_wait_timeout: a
            // LOCK TABLES by hand, an ALTER TABLE queued behind a long transaction), as
            // PostgreSQL's lock_timeout bounds both; MariaDB's default for the table is a year.
            await connection.executeQuery(
              CompiledQuery.raw(
                `set session innodb_lock_wait_timeout = ${lockTimeoutSeconds(options)}, ` +
                  `session lock_wait_timeout = ${lockTimeoutSeconds(options)}, ` +
                  "session time_zone = '+00:00'",
              ),
            );
          },
        }),
        poolStats: () => mysqlPoolStats(pool),
      };
    }
    case "postgres": {
      let pool: pg.Pool | null = null;
      const open = async (): Promise<pg.Pool> => {
        const { Pool, Client } = (await import("pg")).default;
        pool = new Pool({
          Client: preparingClient(Client),
          connectionString: target.url,
          max: options.poolSize,
          connectionTimeoutMillis: connectionTimeoutMs,
          // Statements go out as soon as they are sent, not after the previous one is answered
          // (PostgresPipelines). Kysely sends one at a time on a connection anyway.
          pipeline: true,
          // Connections are renewed every few minutes, so that no prepared statement keeps a
          // plan made when the table was small for longer than that (autovacuum's ANALYZE
          // re-plans them sooner; it is on by default).
          maxLifetimeSeconds: 300,
          // enable_seqscan=off: each prepared statement is planned once per connection for
          // any values, and a plan made while the table is new and empty scans it, for every
          // read, until the table is analyzed. Every statement of the service is served by
          // an index (test/storage/statements.test.ts), so the planner is told to prefer one
          // whatever the statistics say. A statement no index can serve is still planned
          // (as a scan).
          options: `-c lock_timeout=${options.lockTimeoutMs} -c default_transaction_isolation=read\\ committed -c enable_seqscan=off`,
        });
        // An idle connection that the server drops (a restart, a failover) must not crash the
        // process: the pool discards it, and the next query opens a new one.
        pool.on("error", (error) => options.onIdleConnectionError?.(error));
        // The pool listens only while a connection is idle. One checked out with no statement
        // running (between two of a transaction, or not yet used) gets the server's error with
        // no listener, and an unhandled 'error' event would end the process. The error needs
        // nothing more here: the connection can run nothing after it, so the request's next
        // statement fails (a 500, logged with its reason) and the pool discards the connection
        // when it comes back.
        pool.on("connect", (client) => {
          client.on("error", () => undefined);
        });
        return pool;
      };
      // One pool for Kysely and the pipelines, opened by whichever asks first.
      let opening: Promise<pg.Pool> | null = null;
      const shared = (): Promise<pg.Pool> => (opening ??= open());
      return {
        dialect: new PostgresDialect({ pool: shared }),
        postgres: {
          withConnection: async (work) => {
            const client = await (await shared()).connect();
            const { stream } = (client as unknown as pg.Client).connection;
            let pending = 0;
            let corked = false;
            const send: Send = async (query) => {
              options.onStatement?.(query.sql, query.parameters, pending > 0);
              pending++;
              // The statements sent in one go leave in one write to the socket, not one each.
              if (!corked) {
                corked = true;
                stream.cork();
                process.nextTick(() => {
                  corked = false;
                  stream.uncork();
                });
              }
              try {
                const result = await client.query(query.sql, [...query.parameters]);
                return { rows: result.rows as unknown[] };
              } finally {
                pending--;
              }
            };
            let broken: Error | undefined;
            try {
              return await work(send);
            } catch (error) {
              // A connection with statements still unanswered, or whose transaction could not be
              // ended, must not go back to the pool.
              if (pending > 0 || client.getTransactionStatus() !== "I") {
                broken = asError(error);
              }
              throw error;
            } finally {
              client.release(broken);
            }
          },
        },
        afterDestroy: async () => {
          // Kysely ends the pool only if it used it.
          if (pool !== null && !pool.ended) {
            await pool.end();
          }
        },
        poolStats: () =>
          pool === null
            ? { inUse: 0, idle: 0, waiting: 0 }
            : {
                inUse: pool.totalCount - pool.idleCount,
                idle: pool.idleCount,
                waiting: pool.waitingCount,
              },
      };
    }
  }
}

/** Statement names by text: the service sends a handful of fixed texts. */
const statementNames = new Map<string, string>();

function statementName(text: string): string {
  let name = statementNames.get(text);
  if (name === undefined) {
    name = `s${createHash("sha256").update(text).digest("hex").slice(0, 24)}`;
    // Bounded: ad-hoc statements (tools, tests) must not grow it without limit.
    if (statementNames.size >= 256) {
      statementNames.clear();
    }
    statementNames.set(text, name);
  }
  return name;
}

/**
 * A pg client that runs every statement with parameters as a named prepared statement, planned
 * once per connection. Kysely sends unnamed ones, which PostgreSQL plans on every execution: for
 * the customers read (a CTE, two joins and a UNION) planning cost several times the execution,
 * and named statements tripled the reads per second (README, Benchmark). The name is a digest
 * of the text, so one name never stands for two texts.
 */
function preparingClient(Client: typeof pg.Client): typeof pg.Client {
  return class PreparingClient extends Client {
    override query(...args: unknown[]): never {
      const [text, values, ...rest] = args;
      const query = super.query.bind(this) as (...a: unknown[]) => never;
      if (typeof text === "string" && Array.isArray(values) && values.length > 0) {
        return query({ name: statementName(text), text, values }, ...rest);
      }
      return query(...args);
    }
  };
}

/**
 * The mysql2 pool as Kysely uses it, whose connections run every statement with parameters as a
 * server-side prepared statement (`execute`, cached per connection), not as text with the values
 * escaped into it by the client (`query`): the server parses each text once per connection, and
 * no value ever travels inside SQL text.
 *
 * A wait for a free connection fails after `acquireTimeoutMs`, as pg's pool does: mysql2's pool
 * has no such bound, so while the server stalled every request queued for a connection (answered
 * 503 by then) and all their work ran once it answered again. A connection that comes after its
 * caller gave up goes straight back to the pool.
 */
function preparingPool(pool: MysqlPool, acquireTimeoutMs: number): KyselyMysqlPool {
  type Callback = (error: unknown, result: unknown) => void;
  const prepared = new WeakSet<object>();
  return {
    getConnection: (callback) => {
      let waiting = true;
      const timer = setTimeout(() => {
        waiting = false;
        // Kysely reads no connection when told an error.
        const none = undefined as unknown as Parameters<typeof callback>[1];
        callback(new Error(`no free connection within ${acquireTimeoutMs} ms`), none);
      }, acquireTimeoutMs);
      pool.getConnection((error, connection) => {
        if (!waiting) {
          if (error === null) {
            connection.release();
          }
          return;
        }
        waiting = false;
        clearTimeout(timer);
        // On an error there is no connection to patch: Kysely gets the error as it is.
        if (error === null && !prepared.has(connection)) {
          prepared.add(connection);
          const query = connection.query.bind(connection) as (...args: unknown[]) => unknown;
          const execute = connection.execute.bind(connection) as (...args: unknown[]) => unknown;
          Object.assign(connection, {
            query: (sql: string, values?: unknown[], done?: Callback) =>
              Array.isArray(values) && values.length > 0 && done !== undefined
                ? execute(sql, values, done)
                : query(sql, values, done),
          });
        }
        callback(error, connection);
      });
    },
    end: (callback) => {
      pool.end(callback);
    },
  };
}

/**
 * Drops `sqlite_stat4`, which `ANALYZE` writes (and `PRAGMA optimize` when told to analyze without
 * a limit; better-sqlite3's SQLite is built with STAT4). While a connection holds its samples,
 * SQLite plans a statement again whenever a value bound to an indexed column changes: every
 * execution of the service's statements, each served by an index whatever the values
 * (test/storage/statements.test.ts), so the samples could only slow them (README, Benchmark).
 * Dropped on a connection of its own: the connection that drops them keeps them loaded (another
 * connection reloads its statistics when it sees the schema change). One statement, so that two
 * processes opening the file at once cannot both find the table and one fail to drop it; with no
 * table it takes no write lock. `sqlite_stat1`, which plans without the values, stays.
 */
function dropSampleStatistics(path: string, busyTimeoutMs: number): void {
  const connection = new SqliteDatabase(path);
  try {
    connection.pragma(`busy_timeout = ${busyTimeoutMs}`);
    connection.exec("drop table if exists sqlite_stat4");
  } finally {
    connection.close();
  }
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

/**
 * better-sqlite3 behind Kysely prepares every statement anew, which costs as much as running it.
 * The service's statements have fixed text, so each is prepared once and reused.
 */
function statementCache(
  database: SqliteDatabase.Database,
): (text: string) => SqliteDatabase.Statement {
  const statements = new Map<string, SqliteDatabase.Statement>();
  return (text: string) => {
    let statement = statements.get(text);
    if (statement === undefined) {
      statement = database.prepare(text);
      // Bounded: ad-hoc statements (tests, tools) must not grow it without limit.
      if (statements.size >= 256) {
        statements.clear();
      }
      statements.set(text, statement);
    }
    return statement;
  };
}

/**
 * SQLite with BEGIN IMMEDIATE: a transaction takes the write lock when it starts, not at its
 * first write, so two connections (or processes) never both read and then fail to upgrade.
 */
class ImmediateSqliteDriver extends SqliteDriver {
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw("begin immediate"));
  }
}

/**
 * SQLite does run DDL in transactions; saying so makes Kysely's migrator run inside one (BEGIN
 * IMMEDIATE), which serializes migrations of processes sharing one file.
 */
class TransactionalDdlSqliteAdapter extends SqliteAdapter {
  override get supportsTransactionalDdl(): boolean {
    return true;
  }
}

class ImmediateSqliteDialect extends SqliteDialect {
  constructor(private readonly sqliteConfig: SqliteDialectConfig) {
    super(sqliteConfig);
  }

  override createDriver(): Driver {
    return new ImmediateSqliteDriver(this.sqliteConfig);
  }

  override createAdapter(): DialectAdapter {
    return new TransactionalDdlSqliteAdapter();
  }
}

/** Opens (lazily: no connection is made until the first query) the database at `target`. */
export function openDatabase(target: DatabaseTarget, options: DatabaseOptions): Database {
  const created = createDialect(target, options);
  const { onStatement } = options;
  const db = new Kysely<DB>({
    dialect: created.dialect,
    ...(onStatement === undefined
      ? {}
      : {
          log: (event) => {
            onStatement(event.query.sql, event.query.parameters, false);
          },
        }),
  });
  return {
    db,
    dialect: target.dialect,
    options,
    description: describeTarget(target),
    sqlite: created.sqlite ?? null,
    postgres: created.postgres ?? null,
    poolStats: created.poolStats,
    destroy: async () => {
      await created.sqlite?.flush();
      await created.stop?.();
      await db.destroy();
      await created.afterDestroy?.();
    },
  };
}
