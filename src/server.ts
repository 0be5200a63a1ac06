import cluster from "node:cluster";
import type { Worker } from "node:cluster";
import { randomUUID } from "node:crypto";
import { pino } from "pino";
import type { Logger } from "pino";
import { AggregatorRegistry } from "prom-client";
import { ConfigError, loadConfig } from "./config.js";
import type { Config } from "./config.js";
import { createDeps, migrateAtStart, openAtStart } from "./deps.js";
import { rootMessage } from "./error-message.js";
import { buildApp } from "./http/app.js";

const METRICS_REQUEST = "identity:metrics-request";
const METRICS_RESPONSE = "identity:metrics-response";

interface MetricsMessage {
  readonly type: string;
  readonly id: string;
  readonly contentType?: string;
  readonly body?: string;
  readonly error?: string;
}

function isMetricsMessage(message: unknown): message is MetricsMessage {
  return typeof message === "object" && message !== null && "type" in message && "id" in message;
}

/** In a worker: /metrics asks the primary, which aggregates every worker's registry. */
function scrapeThroughPrimary(): Promise<{ contentType: string; body: string }> {
  return new Promise((resolve, reject) => {
    const id = randomUUID();
    const timer = setTimeout(() => {
      process.off("message", onMessage);
      reject(new Error("the primary did not answer the metrics request"));
    }, 5000);
    const onMessage = (message: unknown) => {
      if (isMetricsMessage(message) && message.type === METRICS_RESPONSE && message.id === id) {
        clearTimeout(timer);
        process.off("message", onMessage);
        if (message.error !== undefined) {
          reject(new Error(message.error));
        } else {
          resolve({ contentType: message.contentType ?? "text/plain", body: message.body ?? "" });
        }
      }
    };
    process.on("message", onMessage);
    process.send?.({ type: METRICS_REQUEST, id });
  });
}

/** One server process: the app on the port, stopped gracefully on SIGTERM or SIGINT. */
async function runServer(config: Config, logger: Logger): Promise<void> {
  const deps = await createDeps(config, logger);
  let scrapeMetrics: (() => Promise<{ contentType: string; body: string }>) | undefined;
  if (cluster.isWorker) {
    // Answers the primary's aggregation requests with this worker's registry.
    AggregatorRegistry.setRegistries([deps.metrics.registry]);
    new AggregatorRegistry();
    scrapeMetrics = scrapeThroughPrimary;
  }
  const app = buildApp({
    security: deps.security,
    identify: deps.identify,
    logger,
    errorMessages: config.errorMessages,
    metrics: deps.metrics,
    readiness: () => deps.readiness(),
    ...(scrapeMetrics === undefined ? {} : { scrapeMetrics }),
  });
  app.addHook("onClose", () => deps.close());

  if (config.errorMessages === "transparent") {
    logger.warn(
      "ERROR_MESSAGES=transparent: error answers show their real reason; never in production",
    );
  }
  let closing = false;
  const shutdown = (signal: string) => {
    if (closing) {
      return;
    }
    closing = true;
    logger.info({ signal }, "shutting down: finishing in-flight requests");
    const timer = setTimeout(() => {
      logger.error({ timeoutMs: config.shutdownTimeoutMs }, "shutdown timed out; exiting");
      process.exit(1);
    }, config.shutdownTimeoutMs);
    timer.unref();
    app.close().then(
      () => {
        logger.info("shut down");
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => {
    shutdown("SIGTERM");
  });
  process.on("SIGINT", () => {
    shutdown("SIGINT");
  });
  await app.listen({ host: config.host, port: config.port });
}

/**
 * WORKERS > 1: this process migrates once, forks the workers (which share the port), restarts a
 * worker that dies, aggregates their metrics, and on SIGTERM/SIGINT stops them all gracefully.
 */
async function runPrimary(config: Config, logger: Logger): Promise<void> {
  // The workers each drop SQLite's sqlite_stat4 as they open the file, and warn if they cannot.
  const database = openAtStart(config, {
    poolSize: 1,
    lockTimeoutMs: config.databaseLockTimeoutMs,
    sqliteSynchronous: config.sqliteSynchronous,
  });
  try {
    await migrateAtStart(database, logger);
  } finally {
    await database.destroy();
  }

  const aggregator = new AggregatorRegistry();
  let stopping = false;
  const fork = (): Worker => {
    const worker = cluster.fork();
    worker.on("message", (message: unknown) => {
      if (!isMetricsMessage(message) || message.type !== METRICS_REQUEST) {
        return;
      }
      aggregator.clusterMetrics().then(
        (body) => {
          worker.send({
            type: METRICS_RESPONSE,
            id: message.id,
            contentType: aggregator.contentType,
            body,
          });
        },
        (error: unknown) => {
          worker.send({ type: METRICS_RESPONSE, id: message.id, error: rootMessage(error) });
        },
      );
    });
    return worker;
  };
  // A worker that dies before it listens failed to start (the port taken, the database gone): a
  // new one would fail the same way, forever. The primary stops then, as one process would.
  const listening = new Set<number>();
  cluster.on("listening", (worker) => {
    listening.add(worker.id);
  });
  cluster.on("exit", (worker, code, signal) => {
    if (stopping) {
      return;
    }
    if (!listening.has(worker.id)) {
      logger.fatal({ pid: worker.process.pid, code, signal }, "a worker failed to start; stopping");
      stop("a worker failed to start", 1);
      return;
    }
    listening.delete(worker.id);
    logger.error({ pid: worker.process.pid, code, signal }, "worker died; starting another");
    fork();
  });
  for (let i = 0; i < config.workers; i++) {
    fork();
  }
  logger.info({ workers: config.workers }, "primary started");

  function stop(reason: string, exitCode = 0): void {
    if (stopping) {
      return;
    }
    stopping = true;
    logger.info({ reason }, "stopping workers");
    // A worker whose exit is being handled may still be listed: nothing more to wait for there.
    const workers = Object.values(cluster.workers ?? {}).filter(
      (w): w is Worker => w !== undefined && !w.isDead(),
    );
    let failed = exitCode !== 0;
    let remaining = workers.length;
    if (remaining === 0) {
      process.exit(exitCode);
    }
    for (const worker of workers) {
      worker.once("exit", (code) => {
        failed ||= code !== 0;
        remaining--;
        if (remaining === 0) {
          process.exit(failed ? 1 : 0);
        }
      });
      worker.process.kill("SIGTERM");
    }
    setTimeout(() => {
      logger.error("workers did not stop in time");
      process.exit(1);
    }, config.shutdownTimeoutMs + 2000).unref();
  }
  process.on("SIGTERM", () => {
    stop("SIGTERM");
  });
  process.on("SIGINT", () => {
    stop("SIGINT");
  });
}

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      for (const problem of error.problems) {
        process.stderr.write(`configuration error: ${problem}\n`);
      }
      process.exit(1);
    }
    throw error;
  }
  const logger = pino({ level: config.logLevel });
  if (config.workers > 1 && cluster.isPrimary) {
    await runPrimary(config, logger);
  } else {
    await runServer(config, logger);
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
