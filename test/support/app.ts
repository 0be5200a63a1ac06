import { Writable } from "node:stream";
import type { FastifyInstance } from "fastify";
import { pino } from "pino";
import type { CustomerCache } from "../../src/cache/customer-cache.js";
import { MemoryCustomerCache } from "../../src/cache/memory.cache.js";
import { metricsOf, readinessOf } from "../../src/deps.js";
import { buildApp } from "../../src/http/app.js";
import type { SecurityOptions } from "../../src/http/app.js";
import type { ErrorMessages } from "../../src/http/errors.js";
import { IdentifyService } from "../../src/service/identify.service.js";
import type { IdentifyServiceOptions } from "../../src/service/identify.service.js";
import { SqlContactStore } from "../../src/storage/contact.store.js";
import type { Database } from "../../src/storage/database.js";

/** The app in this process on a real port, with its log lines captured. */
export interface RunningApp {
  readonly app: FastifyInstance;
  readonly url: string;
  /** Every log line written so far, parsed. */
  readonly logs: Record<string, unknown>[];
  close(): Promise<void>;
}

export async function startApp(
  database: Database,
  options: {
    errorMessages?: ErrorMessages;
    /** Defaults to the in-process cache (what CACHE=on gives without REDIS_URL). */
    cache?: CustomerCache;
    service?: IdentifyServiceOptions;
    security?: SecurityOptions;
  } = {},
): Promise<RunningApp> {
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split("\n")) {
        if (line.trim() !== "") {
          logs.push(JSON.parse(line) as Record<string, unknown>);
        }
      }
      callback();
    },
  });
  const logger = pino({ level: "info" }, sink);
  const cache = options.cache ?? new MemoryCustomerCache({ ttlSeconds: 3600, maxEntries: 10_000 });
  const metrics = metricsOf(database, cache);
  const store = new SqlContactStore(database, undefined, {
    onRetry: (_attempt, _cause, reason) => {
      metrics.transactionRetried(reason);
    },
  });
  const app = buildApp({
    identify: new IdentifyService(store, cache, options.service),
    logger,
    errorMessages: options.errorMessages ?? "masked",
    metrics,
    readiness: readinessOf(database, cache),
    ...(options.security === undefined ? {} : { security: options.security }),
  });
  const url = await app.listen({ host: "127.0.0.1", port: 0 });
  return { app, url, logs, close: () => app.close() };
}
