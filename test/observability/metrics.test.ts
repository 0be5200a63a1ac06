import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AggregatorRegistry } from "prom-client";
import { emptyStats } from "../../src/cache/customer-cache.js";
import { createMetrics } from "../../src/observability/metrics.js";

function metrics() {
  return createMetrics({
    cache: emptyStats,
    pool: () => ({ inUse: 0, idle: 1, waiting: 0 }),
  });
}

describe("request metrics", () => {
  it("export each route, method and status's count, cumulative buckets, sum and outcomes", async () => {
    const m = metrics();
    for (const seconds of [0.0004, 0.003, 0.003, 7]) {
      m.observeRequest("/identify", "POST", 200, seconds);
    }
    m.observeRequest("/identify", "POST", 400, 0.0002);
    m.identified("unchanged", "database");
    m.identified("unchanged", "database");
    m.identified("created", "database");
    const text = await m.registry.metrics();
    const line = (name: string) =>
      new RegExp(`^${name.replace(/[{}.+]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1];
    const ok = 'route="/identify",method="POST",status="200"';
    assert.equal(line(`http_requests_total{${ok}}`), "4");
    assert.equal(line(`http_requests_total{route="/identify",method="POST",status="400"}`), "1");
    assert.equal(line(`http_request_duration_seconds_bucket{le="0.0005",${ok}}`), "1");
    assert.equal(line(`http_request_duration_seconds_bucket{le="0.0025",${ok}}`), "1");
    assert.equal(line(`http_request_duration_seconds_bucket{le="0.005",${ok}}`), "3");
    assert.equal(line(`http_request_duration_seconds_bucket{le="2.5",${ok}}`), "3");
    assert.equal(line(`http_request_duration_seconds_bucket{le="+Inf",${ok}}`), "4");
    assert.equal(
      Number(line(`http_request_duration_seconds_sum{${ok}}`)),
      0.0004 + 0.003 + 0.003 + 7,
    );
    assert.equal(line(`http_request_duration_seconds_count{${ok}}`), "4");
    assert.match(text, /# TYPE http_request_duration_seconds histogram/);
    assert.equal(line('identify_outcomes_total{outcome="unchanged",source="database"}'), "2");
    assert.equal(line('identify_outcomes_total{outcome="created",source="database"}'), "1");
  });

  it("sum across processes as prom-client aggregates them (WORKERS)", async () => {
    const [a, b] = [metrics(), metrics()];
    a.observeRequest("/identify", "POST", 200, 0.003);
    b.observeRequest("/identify", "POST", 200, 0.02);
    b.observeRequest("/identify", "POST", 200, 0.02);
    const merged = AggregatorRegistry.aggregate([
      await a.registry.getMetricsAsJSON(),
      await b.registry.getMetricsAsJSON(),
    ]);
    const text = await merged.metrics();
    const ok = 'route="/identify",method="POST",status="200"';
    assert.ok(text.includes(`http_requests_total{${ok}} 3`), text);
    assert.ok(text.includes(`http_request_duration_seconds_bucket{le="0.005",${ok}} 1`), text);
    assert.ok(text.includes(`http_request_duration_seconds_bucket{le="0.025",${ok}} 3`), text);
    assert.ok(text.includes(`http_request_duration_seconds_count{${ok}} 3`), text);
  });
});
