import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { CacheStats } from "../cache/customer-cache.js";
import type { IdentifyOutcome } from "../domain/reconcile.js";
import { RETRY_REASONS } from "../storage/contact.store.js";
import type { RetryReason } from "../storage/contact.store.js";
import type { PoolStats } from "../storage/database.js";
import type { SessionStats } from "../storage/sqlite-session.js";

/** Where the metrics that are read, not counted, come from. */
export interface MetricSources {
  readonly cache: () => CacheStats;
  readonly pool: () => PoolStats;
  /** SQLite only: the group commit's batches. */
  readonly sqlite?: () => SessionStats;
}

/** The service's Prometheus metrics, in one registry per process. */
export interface Metrics {
  readonly registry: Registry;
  observeRequest(route: string, method: string, status: number, seconds: number): void;
  identified(outcome: IdentifyOutcome, source: "cache" | "database"): void;
  transactionRetried(reason: RetryReason): void;
}

const CACHE_RESULTS: [keyof CacheStats, string][] = [
  ["hits", "hit"],
  ["misses", "miss"],
  ["fills", "fill"],
  ["staleFillsRefused", "stale_fill_refused"],
  ["publications", "publication"],
  ["repairs", "repair"],
  ["errors", "error"],
  ["emptied", "emptied"],
];

export function createMetrics(sources: MetricSources): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });

  const requests = new Counter({
    name: "http_requests_total",
    help: "HTTP requests answered, by route, method and status.",
    labelNames: ["route", "method", "status"] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: "http_request_duration_seconds",
    help: "HTTP request latency, by route, method and status.",
    labelNames: ["route", "method", "status"] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const outcomes = new Counter({
    name: "identify_outcomes_total",
    help: "POST /identify answers by outcome (created, secondary_added, merged, unchanged) and source.",
    labelNames: ["outcome", "source"] as const,
    registers: [registry],
  });
  const retries = new Counter({
    name: "db_transaction_retries_total",
    help: "Transactions run again, by reason: deadlock, lock_timeout, serialization, busy (SQLite), contention (the locked customers kept changing, or one was found out of lock order).",
    labelNames: ["reason"] as const,
    registers: [registry],
  });
  for (const reason of RETRY_REASONS) {
    retries.inc({ reason }, 0);
  }
  new Counter({
    name: "cache_operations_total",
    help: "Cache lookups and writes by result: hit, miss, fill, stale_fill_refused, publication, repair, error, emptied (the in-process cache on SQLite, after another process committed).",
    labelNames: ["result"] as const,
    registers: [registry],
    collect() {
      const stats = sources.cache();
      this.reset();
      for (const [key, result] of CACHE_RESULTS) {
        this.inc({ result }, stats[key]);
      }
    },
  });
  new Gauge({
    name: "db_pool_connections",
    help: "Database pool connections: in_use, idle, and waiting (requests queued for one).",
    labelNames: ["state"] as const,
    registers: [registry],
    collect() {
      const stats = sources.pool();
      this.set({ state: "in_use" }, stats.inUse);
      this.set({ state: "idle" }, stats.idle);
      this.set({ state: "waiting" }, stats.waiting);
    },
  });

  const { sqlite } = sources;
  if (sqlite !== undefined) {
    const counters = [
      ["db_sqlite_batches_total", "SQLite batches committed (group commit)", "batches"],
      [
        "db_sqlite_batched_transactions_total",
        "Transactions in the committed SQLite batches (÷ batches = batch size)",
        "transactions",
      ],
    ] as const;
    for (const [name, help, field] of counters) {
      new Counter({
        name,
        help: `${help}, by kind: read, write.`,
        labelNames: ["kind"] as const,
        registers: [registry],
        collect() {
          const stats = sqlite();
          this.reset();
          for (const kind of ["read", "write"] as const) {
            this.inc({ kind }, stats[kind][field]);
          }
        },
      });
    }
  }

  return {
    registry,
    observeRequest(route, method, status, seconds) {
      const labels = { route, method, status: String(status) };
      requests.inc(labels);
      duration.observe(labels, seconds);
    },
    identified(outcome, source) {
      outcomes.inc({ outcome, source });
    },
    transactionRetried(reason) {
      retries.inc({ reason });
    },
  };
}
