import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AggregatorRegistry, Counter, Histogram, Registry } from "prom-client";
import { emptyStats } from "../../src/cache/customer-cache.js";
import { createMetrics } from "../../src/observability/metrics.js";

function metrics() {
  return createMetrics({
    cache: emptyStats,
    pool: () => ({ inUse: 0, idle: 1, waiting: 0 }),
  });
}

/** The value of the line `name value` in Prometheus text (anchored: `} 1` is not `} 10`). */
function line(text: string, name: string): string | undefined {
  return new RegExp(`^${name.replace(/[{}.+]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1];
}

const OK = 'route="/identify",method="POST",status="200"';

/** The same metrics made with prom-client's own Counter and Histogram, for comparison. */
function promClientsOwn() {
  const registry = new Registry();
  const labelNames = ["route", "method", "status"] as const;
  const requests = new Counter({
    name: "http_requests_total",
    help: "HTTP requests answered, by route, method and status.",
    labelNames,
    registers: [registry],
  });
  const duration = new Histogram({
    name: "http_request_duration_seconds",
    help: "HTTP request latency, by route, method and status.",
    labelNames,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const outcomes = new Counter({
    name: "identify_outcomes_total",
    help: "POST /identify answers by outcome (created, secondary_added, merged, unchanged) and source.",
    labelNames: ["outcome", "source"] as const,
    registers: [registry],
  });
  return {
    registry,
    observeRequest(route: string, method: string, status: number, seconds: number) {
      requests.inc({ route, method, status: String(status) });
      duration.observe({ route, method, status: String(status) }, seconds);
    },
    identified(outcome: string, source: string) {
      outcomes.inc({ outcome, source });
    },
  };
}

describe("request metrics", () => {
  it("export exactly what prom-client's own Counter and Histogram would, as text and JSON", async () => {
    const ours = metrics();
    const theirs = promClientsOwn();
    const requests: [number, number][] = [
      [200, 0.0004],
      [200, 0.003],
      [200, 0.003],
      [200, 7],
      [400, 0.0002],
      [503, 15.01],
    ];
    for (const m of [ours, theirs]) {
      for (const [status, seconds] of requests) {
        m.observeRequest("/identify", "POST", status, seconds);
      }
      m.observeRequest("/healthz", "GET", 200, 0.0001);
      m.identified("unchanged", "database");
      m.identified("unchanged", "database");
      m.identified("created", "cache");
    }
    for (const name of [
      "http_requests_total",
      "http_request_duration_seconds",
      "identify_outcomes_total",
    ]) {
      assert.equal(
        await ours.registry.getSingleMetricAsString(name),
        await theirs.registry.getSingleMetricAsString(name),
        name,
      );
      // As JSON: what a worker sends the primary (functions and undefined fields left out).
      assert.deepEqual(
        JSON.parse(JSON.stringify(await ours.registry.getSingleMetric(name)?.get())),
        JSON.parse(JSON.stringify(await theirs.registry.getSingleMetric(name)?.get())),
        name,
      );
    }
    // And the figures themselves, in case both drifted.
    const text = await ours.registry.metrics();
    assert.equal(line(text, `http_requests_total{${OK}}`), "4");
    assert.equal(line(text, `http_request_duration_seconds_bucket{le="0.0005",${OK}}`), "1");
    assert.equal(line(text, `http_request_duration_seconds_bucket{le="0.0025",${OK}}`), "1");
    assert.equal(line(text, `http_request_duration_seconds_bucket{le="0.005",${OK}}`), "3");
    assert.equal(line(text, `http_request_duration_seconds_bucket{le="2.5",${OK}}`), "3");
    assert.equal(line(text, `http_request_duration_seconds_bucket{le="+Inf",${OK}}`), "4");
    assert.equal(line(text, `http_request_duration_seconds_count{${OK}}`), "4");
    assert.equal(line(text, 'identify_outcomes_total{outcome="unchanged",source="database"}'), "2");
  });

  it("sum across processes as the primary aggregates them (WORKERS)", async () => {
    const [a, b] = [metrics(), metrics()];
    a.observeRequest("/identify", "POST", 200, 0.003);
    b.observeRequest("/identify", "POST", 200, 0.02);
    b.observeRequest("/identify", "POST", 200, 0.02);
    // As the workers' registries reach the primary: JSON over the IPC channel.
    const sent = async (m: ReturnType<typeof metrics>) =>
      JSON.parse(JSON.stringify(await m.registry.getMetricsAsJSON())) as Awaited<
        ReturnType<Registry["getMetricsAsJSON"]>
      >;
    const merged = AggregatorRegistry.aggregate([await sent(a), await sent(b)]);
    const text = await merged.metrics();
    assert.equal(line(text, `http_requests_total{${OK}}`), "3");
    assert.equal(line(text, `http_request_duration_seconds_bucket{le="0.005",${OK}}`), "1");
    assert.equal(line(text, `http_request_duration_seconds_bucket{le="0.025",${OK}}`), "3");
    assert.equal(line(text, `http_request_duration_seconds_count{${OK}}`), "3");
  });

  it("ignore a duration that is not a finite number", async () => {
    const m = metrics();
    m.observeRequest("/identify", "POST", 200, Number.NaN);
    m.observeRequest("/identify", "POST", 200, 0.001);
    const text = await m.registry.metrics();
    assert.equal(line(text, `http_request_duration_seconds_sum{${OK}}`), "0.001");
    assert.equal(line(text, `http_requests_total{${OK}}`), "1");
  });
});
