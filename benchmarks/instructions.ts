/**
 * `npm run bench:instructions`: the instructions a request costs the server, counted by
 * valgrind's callgrind (user space only: the kernel's share is not counted). On a shared machine
 * whose speed moves by half within minutes, requests per second cannot tell two builds apart by
 * a few percent; an instruction count does not depend on the machine's speed.
 *
 * For each run: starts the server under `valgrind --tool=callgrind` with instrumentation off,
 * sends --warmup requests of the benchmark's workload (the issue's mix on 1,000 customers, which
 * the warm-up creates), turns instrumentation on for --requests requests over 32 connections,
 * turns it off, and stops the server. Prints instructions per request on the main thread (the
 * one that bounds the throughput) and in all threads (with the garbage collector's and the
 * compiler's). V8's compiler decides differently from one run to the next, so runs of one build
 * fall into two or three levels some 15% apart: compare builds by their lowest runs, over several.
 *
 * Options: --server sqlite|ceiling (sqlite: the service on a new SQLite file, as `npm start`
 * runs it; ceiling: the bare Fastify route), --root DIR (the checkout whose `dist/` runs, to
 * measure another build: a `git worktree` with `npm run build`), --requests N (8000),
 * --warmup N (20000), --runs N (3). Needs valgrind.
 */
import { spawn, execFileSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import autocannon from "autocannon";
import { MIX, Workload } from "./workload.js";

const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: "sqlite" },
    root: { type: "string", default: new URL("..", import.meta.url).pathname },
    requests: { type: "string", default: "8000" },
    warmup: { type: "string", default: "20000" },
    runs: { type: "string", default: "3" },
  },
});
const ROOT = resolve(args.root);
const REQUESTS = Number(args.requests);
const WARMUP = Number(args.warmup);
const RUNS = Number(args.runs);
if (args.server !== "sqlite" && args.server !== "ceiling") {
  throw new Error(`--server must be sqlite or ceiling, not ${args.server}`);
}

interface Count {
  readonly main: number;
  readonly all: number;
}

/** One run: a new server (and database) under callgrind; instructions per measured request. */
async function run(): Promise<Count> {
  const dir = mkdtempSync(join(tmpdir(), "idr-instructions-"));
  const out = join(dir, "callgrind.out");
  const [entry, env] =
    args.server === "ceiling"
      ? [["--import", "tsx", join(ROOT, "benchmarks/ceiling-server.ts")], {}]
      : [
          [
            "--max-semi-space-size=16",
            "--heap-growing-percent=150",
            join(ROOT, "dist/src/server.js"),
          ],
          { DATABASE_URL: `sqlite://${join(dir, "identity.db")}`, CACHE: "off" },
        ];
  const child = spawn(
    "valgrind",
    [
      "--tool=callgrind",
      "--instr-atstart=no",
      "--separate-threads=yes",
      `--callgrind-out-file=${out}`,
      process.execPath,
      ...entry,
    ],
    {
      cwd: ROOT,
      env: { ...process.env, ...env, PORT: "0", LOG_LEVEL: "info", MAX_REQUESTS_PER_SOCKET: "0" },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  try {
    const url = await new Promise<string>((listening, failed) => {
      createInterface({ input: child.stdout }).on("line", (line) => {
        const address = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(line)?.[1];
        if (address !== undefined) {
          listening(address);
        }
      });
      child.once("exit", (code) => {
        failed(new Error(`the server exited with ${String(code)}`));
      });
    });
    const workload = new Workload("instructions", 42, MIX);
    workload.populate(1000);
    const drive = (amount: number) =>
      autocannon({
        url: `${url}/identify`,
        connections: 32,
        amount,
        timeout: 120,
        requests: [
          {
            method: "POST",
            headers: { "content-type": "application/json" },
            setupRequest: (request) => ({ ...request, body: JSON.stringify(workload.next()) }),
          },
        ],
      });
    await drive(WARMUP);
    const pid = String(child.pid);
    execFileSync("callgrind_control", ["--instr=on", pid], { stdio: "ignore" });
    const measured = await drive(REQUESTS);
    execFileSync("callgrind_control", ["--instr=off", pid], { stdio: "ignore" });
    if (measured.non2xx > 0 || measured.errors > 0) {
      throw new Error(`${measured.non2xx} non-2xx answers and ${measured.errors} errors`);
    }
    child.kill("SIGTERM");
    await once(child, "exit");
    // One file per thread (out-01 is the main thread), each with its total.
    let main = 0;
    let all = 0;
    for (const file of readdirSync(dir).filter((name) => name.startsWith("callgrind.out"))) {
      const total = /^totals: (\d+)/m.exec(readFileSync(join(dir, file), "utf8"));
      const instructions = Number(total?.[1] ?? 0);
      all += instructions;
      if (file.endsWith("-01")) {
        main = instructions;
      }
    }
    const answered = measured.requests.total;
    return { main: Math.round(main / answered), all: Math.round(all / answered) };
  } finally {
    if (child.exitCode === null) {
      child.kill("SIGKILL");
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

const counts: Count[] = [];
for (let index = 0; index < RUNS; index++) {
  const count = await run();
  counts.push(count);
  process.stdout.write(
    `${args.server} (${ROOT}) run ${index + 1}: ${count.main.toLocaleString("en")} instructions ` +
      `a request on the main thread, ${count.all.toLocaleString("en")} in all threads\n`,
  );
}
const lowest = Math.min(...counts.map((count) => count.main));
process.stdout.write(`lowest on the main thread: ${lowest.toLocaleString("en")}\n`);
