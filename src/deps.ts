import { rootMessage } from "./error-message.js";
import type { CustomerCache } from "./cache/customer-cache.js";
import { NoCache } from "./cache/customer-cache.js";
import { MemoryCustomerCache } from "./cache/memory.cache.js";
import type { Config } from "./config.js";
import { IdentifyService } from "./service/identify.service.js";
import { SqlCacheDebtLedger } from "./storage/cache-debt.repository.js";
import { DEFAULT_RETRY_POLICY, SqlContactStore } from "./storage/contact.store.js";
import { describeTarget, openDatabase } from "./storage/database.js";
import type { Database, DatabaseOptions } from "./storage/database.js";
import { migrateToLatest, pendingMigrations } from "./storage/migrate.js";
import type { FastifyBaseLogger } from "fastify";
import type { Redis } from "ioredis";
import type { SecurityOptions } from "./http/app.js";
import { ApiKeys } from "./http/security.js";
import type { Readiness } from "./http/health.route.js";
import { createMetrics } from "./observability/metrics.js";
import type { Metrics } from "./observability/metrics.js";

/** Everything the app needs, built from the configuration; the only place adapters are chosen. */
export interface Deps {
  readonly security: SecurityOptions;
  readonly database: Database;
  readonly identify: IdentifyService;
  readonly cache: CustomerCache;
  readonly metrics: Metrics;
  readiness(): Promise<Readiness>;
  close(): Promise<void>;
}

/**
 * The limits on clients and connections, from the configuration. Redis's client (ioredis) loads
 * only when REDIS_URL is set, as the database drivers do (storage/database.ts).
 */
export async function securityOf(
  config: Config,
  logger: FastifyBaseLogger,
  /** The cache's Redis client, if it has one: the limiter shares it (see createDeps). */
  cacheRedis: Redis | null,
): Promise<SecurityOptions> {
  const keys = new ApiKeys([...config.apiKeys, ...config.apiKeysFile]);
  if (!keys.enabled) {
    logger.warn(
      "no API keys configured (API_KEYS, API_KEYS_FILE): /identify and /metrics are open to anyone who can reach this port",
    );
  }
  let redis: Redis | null = null;
  if (config.rateLimitMax > 0 && cacheRedis !== null) {
    redis = cacheRedis;
  } else if (config.rateLimitMax > 0 && config.redisUrl !== null) {
    const [{ Redis }, { acceleratorRedisOptions }] = await Promise.all([
      import("ioredis"),
      import("./cache/redis.cache.js"),
    ]);
    redis = new Redis(config.redisUrl, acceleratorRedisOptions(config.cacheTimeoutMs));
    // Failures are skipped by the limiter (the request goes on); the cache logs Redis's state.
    redis.on("error", () => undefined);
  }
  return {
    keys,
    threats: {
      limit: config.threatLimit,
      windowMs: config.threatWindowMs,
      cooldownMs: config.threatCooldownMs,
    },
    rateLimit:
      config.rateLimitMax > 0
        ? {
            max: config.rateLimitMax,
            windowMs: config.rateLimitWindowMs,
            redis,
            prefix: `${config.cachePrefix}rate:`,
            syncMs: config.rateLimitSyncMs,
          }
        : null,
    corsOrigins: config.corsOrigins,
    trustProxy: config.trustProxy,
    requestTimeoutMs: config.requestTimeoutMs,
    connectionTimeoutMs: config.connectionTimeoutMs,
    handlerTimeoutMs: config.handlerTimeoutMs,
    keepAliveTimeoutMs: config.keepAliveTimeoutMs,
    maxRequestsPerSocket: config.maxRequestsPerSocket,
  };
}

/** The service's metrics, reading the database's pool (and SQLite's batches) and the cache. */
export function metricsOf(database: Database, cache: CustomerCache): Metrics {
  const { sqlite } = database;
  return createMetrics({
    cache: () => cache.stats(),
    pool: () => database.poolStats(),
    ...(sqlite === null ? {} : { sqlite: () => sqlite.stats() }),
  });
}

/** How long /readyz waits for the database before it answers "unreachable". */
export const READINESS_TIMEOUT_MS = 2000;

/**
 * Readiness: the database answers within `timeoutMs` and has every migration; the cache is only
 * reported. The bound matters when the database stops answering on a connection already open
 * (a stalled server or network): the check's statement would wait as long as TCP does.
 */
export function readinessOf(
  database: Database,
  cache: CustomerCache,
  timeoutMs = READINESS_TIMEOUT_MS,
): () => Promise<Readiness> {
  return async () => {
    const cacheState = { kind: cache.kind, available: cache.available() };
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<null>((resolve) => {
      timer = setTimeout(() => {
        resolve(null);
      }, timeoutMs);
    });
    try {
      const pending = await Promise.race([pendingMigrations(database), timedOut]);
      if (pending === null) {
        return { ready: false, database: "unreachable", cache: cacheState };
      }
      return pending.length === 0
        ? { ready: true, database: "ok", cache: cacheState }
        : { ready: false, database: "migrations pending", cache: cacheState };
    } catch {
      return { ready: false, database: "unreachable", cache: cacheState };
    } finally {
      clearTimeout(timer);
    }
  };
}

/**
 * Picks the cache adapter: Redis when REDIS_URL is set; none with CACHE=off; without Redis, none
 * by default (CACHE=auto), and in-process with CACHE=on when one process serves (WORKERS=1).
 * On an SQLite `database` that cache reads its data_version (which tells of other processes'
 * commits) and stays coherent with every process on the file; elsewhere (MySQL/MariaDB,
 * PostgreSQL, or no database given) within this one only, and nothing here can tell that other
 * instances share the database (containers behind a load balancer, each with WORKERS=1). On
 * SQLite it is not the default either: with SQLite's kept answers it saves no CPU there, and it
 * cost 41–66 MB of RSS under sustained load, up to the speed issue's 200 MB (README, Cache).
 * Redis gets the database's ledger of cache debts (README, Cache: "A debt outlives its instance").
 */
export async function createCache(
  config: Config,
  logger: FastifyBaseLogger,
  database: Database | null,
): Promise<{ readonly cache: CustomerCache; readonly redis: Redis | null }> {
  if (config.cache === "off") {
    return { cache: new NoCache(), redis: null };
  }
  if (config.redisUrl === null) {
    if (config.cache === "auto") {
      return { cache: new NoCache(), redis: null };
    }
    if (config.workers > 1) {
      // With databaseVersion it would be coherent, but every write of another worker empties it.
      logger.warn(
        "WORKERS > 1 without REDIS_URL: the in-process cache would not be shared, so it is off",
      );
      return { cache: new NoCache(), redis: null };
    }
    const sqlite = database?.sqlite ?? null;
    const cache = new MemoryCustomerCache({
      ttlSeconds: config.cacheTtlSeconds,
      maxEntries: config.cacheMaxEntries,
      ...(sqlite === null ? {} : { databaseVersion: () => sqlite.dataVersion() }),
    });
    return { cache, redis: null };
  }
  const { RedisCustomerCache } = await import("./cache/redis.cache.js");
  const cache = new RedisCustomerCache(
    {
      url: config.redisUrl,
      prefix: config.cachePrefix,
      ttlSeconds: config.cacheTtlSeconds,
      timeoutMs: config.cacheTimeoutMs,
      ...(database === null ? {} : { ledger: new SqlCacheDebtLedger(database) }),
    },
    {
      onUnavailable: (reason) => {
        logger.warn({ reason }, "cache unavailable: answering from the database");
      },
      onAvailable: () => {
        logger.info("cache available again");
      },
      onWarning: (message) => {
        logger.warn(message);
      },
    },
  );
  if (!(await cache.waitUntilReady(2000))) {
    logger.warn("Redis is not reachable yet: answering from the database until it is");
  }
  return { cache, redis: cache.client };
}

/** Raised when the configured database cannot be reached or migrated at start. */
export class StartupError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StartupError";
  }
}

/** The one line of a database that cannot be used at start: it names DATABASE_URL. */
function cannotUse(description: string, error: unknown): StartupError {
  return new StartupError(`DATABASE_URL: cannot use ${description}: ${rootMessage(error)}`, {
    cause: error,
  });
}

/**
 * openDatabase at start. A database that cannot be opened at all (an SQLite file in a missing or
 * read-only directory, on a full disk) becomes a StartupError whose one line names DATABASE_URL,
 * as an unreachable server does when it is first used.
 */
export function openAtStart(config: Config, options: DatabaseOptions): Database {
  try {
    return openDatabase(config.database, options);
  } catch (error) {
    throw cannotUse(describeTarget(config.database), error);
  }
}

/**
 * Opens the database, brings its schema up to date and wires the service. Throws StartupError
 * with one line naming the variable at fault when the database is unreachable.
 */
/**
 * Migrates at start; an unreachable or unmigratable database becomes a StartupError whose one
 * line names DATABASE_URL (password masked). A schema a newer build migrated, which has every
 * migration of this build, is used as it is, with a warning (a rolling deploy, or a rollback).
 */
export async function migrateAtStart(
  database: Database,
  logger: FastifyBaseLogger,
): Promise<string[]> {
  try {
    return await migrateToLatest(database, (newer) => {
      logger.warn(
        { database: database.description, newer },
        "the schema was migrated by a newer build: starting on it without migrating",
      );
    });
  } catch (error) {
    throw cannotUse(database.description, error);
  }
}

export async function createDeps(config: Config, logger: FastifyBaseLogger): Promise<Deps> {
  const database = openAtStart(config, {
    poolSize: config.databasePoolSize,
    lockTimeoutMs: config.databaseLockTimeoutMs,
    sqliteSynchronous: config.sqliteSynchronous,
    onIdleConnectionError: (error) => {
      logger.warn({ reason: error.message }, "database dropped an idle connection");
    },
    onCheckpointError: (error) => {
      logger.error(
        { reason: error.message },
        "SQLite checkpointer thread failed; the connection checkpoints by itself",
      );
    },
    onSampleStatisticsKept: (error) => {
      logger.warn(
        { reason: error.message },
        "SQLite's sqlite_stat4 (written by ANALYZE) could not be dropped: every statement is " +
          "planned again at each execution until it is",
      );
    },
  });
  try {
    const applied = await migrateAtStart(database, logger);
    logger.info({ database: database.description, applied }, "database ready");
  } catch (error) {
    await database.destroy().catch(() => undefined);
    throw error;
  }
  // One Redis connection for the cache and the rate limiter: with auto-pipelining, a turn of the
  // event loop's lookups and limit checks then go out in one write, not two (README, Benchmark).
  let built: { cache: CustomerCache; redis: Redis | null } | null = null;
  let security: SecurityOptions;
  try {
    built = await createCache(config, logger, database);
    security = await securityOf(config, logger, built.redis);
  } catch (error) {
    await built?.cache.close().catch(() => undefined);
    await database.destroy().catch(() => undefined);
    throw error;
  }
  const { cache, redis: cacheRedis } = built;
  const metrics = metricsOf(database, cache);
  // Retries stop at the handler timeout: no client waits for the answer after it.
  const retry = { ...DEFAULT_RETRY_POLICY, maxElapsedMs: config.handlerTimeoutMs };
  const store = new SqlContactStore(database, retry, {
    onRetry: (attempt, cause, reason) => {
      metrics.transactionRetried(reason);
      logger.debug({ attempt, reason: rootMessage(cause) }, "transaction retried");
    },
  });
  logger.info({ cache: cache.kind }, "cache ready");
  return {
    security,
    database,
    cache,
    metrics,
    readiness: readinessOf(database, cache),
    identify: new IdentifyService(store, cache),
    close: async () => {
      // The cache closes its own client (it may first pay what it owes to Redis).
      if (security.rateLimit?.redis !== cacheRedis) {
        security.rateLimit?.redis?.disconnect();
      }
      await cache.close();
      await database.destroy();
    },
  };
}
