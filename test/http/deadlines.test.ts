import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Deadlines, HandlerTimeoutError } from "../../src/http/deadlines.js";

describe("Deadlines", () => {
  it("passes on the work's value and its error, before the deadline", async () => {
    const deadlines = new Deadlines(200);
    assert.equal(await deadlines.within(Promise.resolve(7)), 7);
    const failure = new Error("the work failed");
    await assert.rejects(deadlines.within(Promise.reject(failure)), (error) => error === failure);
  });

  it("rejects once the deadline has passed (within a tenth of it), not before", async () => {
    const deadlines = new Deadlines(200);
    const started = Date.now();
    let late = false;
    const slow = sleep(600).then(() => {
      late = true;
      return "too late";
    });
    const early = deadlines.within(sleep(50).then(() => "in time"));
    const error = await deadlines.within(slow).then(
      () => null,
      (reason: unknown) => reason,
    );
    const elapsed = Date.now() - started;
    assert.equal(await early, "in time");
    assert.ok(error instanceof HandlerTimeoutError, `rejected with ${String(error)}`);
    assert.equal(error.code, "HANDLER_TIMEOUT");
    assert.equal(late, false, "rejected before the work ended");
    // Up to a sweep (20 ms) late, and a loaded machine's delays on top.
    assert.ok(elapsed >= 195 && elapsed < 200 + 250, `rejected after ${elapsed} ms`);
    await slow;
  });

  it("lets go of a request as soon as it settles, before any sweep", async () => {
    const deadlines = new Deadlines(10_000); // sweeps every 250 ms
    const work = deadlines.within(sleep(5).then(() => "done"));
    assert.equal(deadlines.size, 1);
    assert.equal(await work, "done");
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(deadlines.size, 0);
  });

  it("keeps track of requests settling in any order", async () => {
    const deadlines = new Deadlines(100);
    const settle: (() => void)[] = [];
    const works = [0, 1, 2, 3].map((i) =>
      deadlines.within(
        new Promise<number>((resolve) => {
          settle[i] = () => {
            resolve(i);
          };
        }),
      ),
    );
    assert.equal(deadlines.size, 4);
    for (const [i, left] of [
      [1, 3],
      [3, 2],
      [0, 1],
    ] as const) {
      settle[i]?.();
      assert.equal(await works[i], i);
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(deadlines.size, left);
    }
    // The one left still times out (the interval keeps no process alive: this timer does), and
    // settling it afterwards changes nothing.
    const alive = setTimeout(() => undefined, 1000);
    await assert.rejects(works[2] ?? Promise.resolve(), HandlerTimeoutError);
    clearTimeout(alive);
    assert.equal(deadlines.size, 0);
    settle[2]?.();
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(deadlines.size, 0);
  });

  it("times out on its own clock, those due only, while the others stay tracked", async () => {
    let clock = 1_000;
    const deadlines = new Deadlines(100, () => clock); // sweeps every 10 ms
    const alive = setTimeout(() => undefined, 1000);
    const outcomes: string[] = [];
    const track = (name: string, work: Promise<unknown>) =>
      deadlines.within(work).then(
        () => outcomes.push(`${name} settled`),
        (error: unknown) =>
          outcomes.push(`${name} ${error instanceof HandlerTimeoutError ? "timed out" : "failed"}`),
      );
    let settleA = (): void => undefined;
    const a = track("a", new Promise<void>((resolve) => (settleA = resolve)));
    clock = 1_060;
    let settleB = (): void => undefined;
    const b = track("b", new Promise<void>((resolve) => (settleB = resolve)));
    await sleep(30); // sweeps see neither due
    assert.deepEqual(outcomes, []);
    clock = 1_120; // a is due (1,100), b not (1,160)
    await a;
    assert.deepEqual(outcomes, ["a timed out"]);
    assert.equal(deadlines.size, 1);
    settleA(); // the timed-out work ends later: nothing changes
    await sleep(1);
    assert.equal(deadlines.size, 1);
    settleB();
    await b;
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(outcomes, ["a timed out", "b settled"]);
    assert.equal(deadlines.size, 0);
    clearTimeout(alive);
  });

  it("never keeps the process alive: a process with only a request in flight exits", async () => {
    const module = new URL("../../src/http/deadlines.ts", import.meta.url).href;
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        "--input-type=module",
        "-e",
        `const { Deadlines } = await import(${JSON.stringify(module)});` +
          "void new Deadlines(60000).within(new Promise(() => {}));",
      ],
      { stdio: "ignore" },
    );
    const started = Date.now();
    const code = await new Promise((resolve) => child.once("exit", resolve));
    assert.equal(code, 0);
    assert.ok(Date.now() - started < 10_000);
  });

  it("keeps no interval running while nothing is in flight", async () => {
    const deadlines = new Deadlines(50);
    assert.equal(deadlines.sweeping, false);
    await deadlines.within(sleep(10));
    assert.equal(deadlines.sweeping, true);
    await sleep(30); // the next sweep finds nothing in flight and stops
    assert.equal(deadlines.sweeping, false);
  });
});
