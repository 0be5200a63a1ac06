import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MIX, parseMix, Workload } from "../../benchmarks/workload.js";

/** The benchmark's request generator: the customers it believes exist match what it sent. */
describe("benchmark workload", () => {
  /** Per customer still standing (not merged into another), its emails and phones. */
  function standing(workload: Workload) {
    return workload.customers().filter((person) => person.into === undefined);
  }

  it("keeps each identifier once after bridges between people already merged", () => {
    const workload = new Workload("bridges", 7, parseMix("0,0,0,100"));
    workload.populate(50);
    const created = standing(workload).flatMap((person) => [...person.emails, ...person.phones]);
    // Far more bridges than customers: most join two people of one customer already.
    for (let i = 0; i < 5000; i++) {
      const body = workload.next();
      assert.ok(body.email !== undefined && body.phoneNumber !== undefined);
    }
    const customers = standing(workload);
    assert.equal(customers.length, 1);
    const held = customers.flatMap((person) => [...person.emails, ...person.phones]);
    assert.deepEqual([...held].sort(), [...created].sort());
  });

  it("sends repeats only with identifiers it sent before, for the issue's mix", () => {
    const workload = new Workload("mix", 11, MIX);
    const sent = new Set<string>();
    for (const plan of workload.populate(200)) {
      for (const body of plan) {
        sent.add(body.email ?? "");
        sent.add(body.phoneNumber ?? "");
      }
    }
    let repeats = 0;
    for (let i = 0; i < 20_000; i++) {
      const body = workload.next();
      const known = [body.email, body.phoneNumber].filter((v) => v !== undefined);
      if (known.every((value) => sent.has(value))) {
        repeats++;
      }
      for (const value of known) {
        sent.add(value);
      }
    }
    // Repeats and bridges (86%) use known identifiers only; new information and new customers
    // bring one or two new ones.
    assert.ok(Math.abs(repeats / 20_000 - 0.86) < 0.02, `share of known-only requests ${repeats}`);
  });
});
