import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { MetricType } from "prom-client";
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

type RequestLabel = "route" | "method" | "status";
type RequestLabels = Record<RequestLabel, string>;

const REQUEST_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** The requests of one route, method and status so far. */
interface RequestCount {
  readonly labels: RequestLabels;
  count: number;
  sum: number;
  /** Requests per bucket of REQUEST_BUCKETS (not cumulative); past the last one, none. */
  readonly buckets: number[];
}

const DURATION = "http_request_duration_seconds";
/** prom-client types its metric types as a numeric enum; its metrics carry the text. */
const HISTOGRAM_TYPE = "histogram" as unknown as MetricType;
const DURATION_HELP = "HTTP request latency, by route, method and status.";

/**
 * `http_request_duration_seconds` from a tally the hot path keeps in a Map, exported in
 * prom-client's format when scraped. prom-client's own `observe` and `inc` validate and hash the
 * labels on every call: three hashes a request were about 2% of a repeat's CPU.
 *
 * Only `get` (and `getForPromString`) of prom-client's Histogram are used: its own storage stays
 * empty, so `observe` and `reset` on this metric do nothing, and `registry.resetMetrics()` does
 * not reset the request metrics (the service never resets them).
 */
class RequestHistogram extends Histogram<RequestLabel> {
  constructor(
    private readonly tally: ReadonlyMap<string, RequestCount>,
    registry: Registry,
  ) {
    super({
      name: DURATION,
      help: DURATION_HELP,
      labelNames: ["route", "method", "status"],
      buckets: REQUEST_BUCKETS,
      registers: [registry],
    });
  }

  override get(): ReturnType<Histogram<RequestLabel>["get"]> {
    // In prom-client's shape, `exemplar: null` on the buckets included (what the workers send
    // the primary, as JSON, is then the same).
    const bucket = `${DURATION}_bucket`;
    const values: {
      labels: Record<string, string | number>;
      value: number;
      metricName: string;
      exemplar?: null;
    }[] = [];
    for (const { labels, count, sum, buckets } of this.tally.values()) {
      let cumulative = 0;
      REQUEST_BUCKETS.forEach((le, i) => {
        cumulative += buckets[i] ?? 0;
        values.push({
          labels: { le, ...labels },
          value: cumulative,
          metricName: bucket,
          exemplar: null,
        });
      });
      values.push(
        { labels: { le: "+Inf", ...labels }, value: count, metricName: bucket, exemplar: null },
        { labels: { ...labels }, value: sum, metricName: `${DURATION}_sum` },
        { labels: { ...labels }, value: count, metricName: `${DURATION}_count` },
      );
    }
    return Promise.resolve({
      name: DURATION,
      help: DURATION_HELP,
      type: HISTOGRAM_TYPE,
      values,
      aggregator: "sum",
      collect: () => undefined,
    });
  }

  /** What the registry formats as text (prom-client calls this, when present, instead of `get`). */
  getForPromString(): ReturnType<Histogram<RequestLabel>["get"]> {
    return this.get();
  }
}

const CACHE_RESULTS: [keyof CacheStats, string][] = [
  ["hits", "hit"],
  ["misses", "miss"],
  ["fills", "fill"],
  ["staleFillsRefused", "stale_fill_refused"],
  ["publications", "publication"],
  ["repairs", "repair"],
  ["errors", "error"],
  ["debtsRecorded", "debt_recorded"],
  ["debtsPaid", "debt_paid"],
  ["emptied", "emptied"],
];

export function createMetrics(sources: MetricSources): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });

  // Requests and outcomes are tallied in Maps and handed to prom-client when scraped (see
  // RequestHistogram).
  const requestTally = new Map<string, RequestCount>();
  new Counter({
    name: "http_requests_total",
    help: "HTTP requests answered, by route, method and status.",
    labelNames: ["route", "method", "status"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const { labels, count } of requestTally.values()) {
        this.inc(labels, count);
      }
    },
  });
  new RequestHistogram(requestTally, registry);
  const outcomeTally = new Map<string, { outcome: string; source: string; count: number }>();
  new Counter({
    name: "identify_outcomes_total",
    help: "POST /identify answers by outcome (created, secondary_added, merged, unchanged) and source.",
    labelNames: ["outcome", "source"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const { outcome, source, count } of outcomeTally.values()) {
        this.inc({ outcome, source }, count);
      }
    },
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
    help: "Cache lookups and writes by result: hit, miss, fill, stale_fill_refused, publication, repair, error, debt_recorded and debt_paid (a failed publication's debt kept in the database, and paid to Redis by this instance), emptied (the in-process cache on SQLite, after another process committed).",
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
      if (!Number.isFinite(seconds)) {
        return;
      }
      const key = `${route} ${method} ${status}`;
      let tally = requestTally.get(key);
      if (tally === undefined) {
        const labels = { route, method, status: String(status) };
        tally = { labels, count: 0, sum: 0, buckets: REQUEST_BUCKETS.map(() => 0) };
        requestTally.set(key, tally);
      }
      tally.count++;
      tally.sum += seconds;
      const bucket = REQUEST_BUCKETS.findIndex((le) => seconds <= le);
      if (bucket >= 0) {
        tally.buckets[bucket] = (tally.buckets[bucket] ?? 0) + 1;
      }
    },
    identified(outcome, source) {
      const key = `${outcome} ${source}`;
      const tally = outcomeTally.get(key);
      if (tally === undefined) {
        outcomeTally.set(key, { outcome, source, count: 1 });
      } else {
        tally.count++;
      }
    },
    transactionRetried(reason) {
      retries.inc({ reason });
    },
  };
}
