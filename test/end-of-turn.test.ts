import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { endOfTurn } from "../src/end-of-turn.js";

describe("endOfTurn", () => {
  it("gives the callers of one turn one promise, settled in the turn's check phase", async () => {
    const order: string[] = [];
    setImmediate(() => order.push("immediate before"));
    const first = endOfTurn();
    assert.equal(endOfTurn(), first);
    void first.then(() => order.push("end of turn"));
    setImmediate(() => order.push("immediate after"));
    process.nextTick(() => order.push("tick"));
    await new Promise((resolve) => setImmediate(resolve));
    // Not a microtask or a tick (it would come first): with the immediates, in their order.
    assert.deepEqual(order, ["tick", "immediate before", "end of turn", "immediate after"]);
    assert.notEqual(endOfTurn(), first, "a later turn gets a promise of its own");
  });
});
