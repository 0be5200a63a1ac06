import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { startServer } from "./server.js";
import { setTimeout as sleep } from "node:timers/promises";

const SUPPORT = new URL("./server.ts", import.meta.url).pathname;
const ROOT = new URL("../../", import.meta.url).pathname;

/** True while `pid` runs: it exists and is not a zombie (Linux's /proc). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** The helper that starts servers for the tests and the benchmark. */
describe("startServer", () => {
  it("leaves no server running when the process that started it dies of an uncaught error", async () => {
    const dir = mkdtempSync(join(tmpdir(), "idr-orphan-"));
    try {
      const script = join(dir, "crash.mts");
      writeFileSync(
        script,
        [
          `import { startServer } from ${JSON.stringify(SUPPORT)};`,
          `const server = await startServer({}, ["--import", "tsx", "benchmarks/ceiling-server.ts"]);`,
          "process.stdout.write(`${server.process.pid}\\n`);",
          'setTimeout(() => { throw new Error("crash"); }, 10);',
        ].join("\n"),
      );
      const run = spawnSync(process.execPath, ["--import", "tsx", script], {
        cwd: ROOT,
        encoding: "utf8",
        timeout: 30_000,
      });
      assert.equal(run.status, 1, run.stderr);
      const pid = Number(run.stdout.trim());
      assert.ok(pid > 0, run.stdout);
      // Gone, or a zombie that nobody has reaped yet (its parent is gone): either way not running.
      let alive = true;
      for (let i = 0; i < 50 && alive; i++) {
        alive = running(pid);
        if (alive) {
          await sleep(20);
        }
      }
      assert.equal(alive, false, `server ${pid} outlived the process that started it`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("kills a process that does not listen within startTimeoutMs and rejects", async () => {
    // Exits by itself after 5 s, so that without the bound startServer rejects another way.
    const never = ["-e", 'console.log("started"); setTimeout(() => process.exit(3), 5000);'];
    const error = await startServer({}, never, { startTimeoutMs: 300 }).then(
      () => null,
      (reason: unknown) => reason,
    );
    assert.ok(error instanceof Error, "startServer resolved for a process that never listens");
    assert.match(error.message, /did not listen within 300 ms/);
    // Killed, not exited with its own code.
    assert.match(String((error.cause as Error | undefined)?.message), /server exited with null/);
  });

  it("waits without a bound unless told one", async () => {
    const late = [
      "-e",
      'setTimeout(() => console.log("Server listening at http://127.0.0.1:9"), 400);',
    ];
    const server = await startServer({}, late);
    assert.equal(server.url, "http://127.0.0.1:9");
    await server.stop();
  });
});
