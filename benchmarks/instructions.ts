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
 * Options: --server sqlite|ceiling (sqlite: the service's `dist/` on a new SQLite file, as
 * `npm start` runs it; ceiling: the bare Fastify route, `benchmarks/ceiling-server.ts` through
 * tsx), --root DIR (the checkout to run, to measure another build: a `git worktree` with its
 * `node_modules` and `npm run build`), --requests N (8000),
 * --warmup N (20000), --runs N (3). Needs valgrind.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import autocannon from "autocannon";
import { startServer } from "../test/support/server.js";
import type { ServerProcess } from "../test/support/server.js";
import { CEILING_ENTRY, identifyRequests, startArguments } from "./servers.js";
import { MIX, Workload } from "./workload.js";

const { values: args } = parseArgs({
  options: {
    server: { type: "string", default: "sqlite" },
    root: { type: "string", default: fileURLToPath(new URL("..", import.meta.url)) },
    requests: { type: "string", default: "8000" },
    warmup: { type: "string", default: "20000" },
    runs: { type: "string", default: "3" },
  },
});
const ROOT = resolve(args.root);
const REQUESTS = Number(args.requests);
const WARMUP = Number(args.warmup);
const RUNS = Number(args.runs);
if (!existsSync(ROOT)) {
  throw new Error(`--root ${ROOT} does not exist`);
}
if (args.server !== "sqlite" && args.server !== "ceiling") {
  throw new Error(`--server must be sqlite or ceiling, not ${args.server}`);
}
for (const [option, value] of [
  ["--requests", REQUESTS],
  ["--warmup", WARMUP],
  ["--runs", RUNS],
] as const) {
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`${option} must be a whole number of at least 1`);
  }
}
/** How long the server may take to start under valgrind (it runs some 50 times slower). */
const START_TIMEOUT_MS = 300_000;

interface Count {
  readonly main: number;
  readonly all: number;
}

/** The server's arguments after `node`, and its environment besides this process's. */
function serverCommand(dir: string): [string[], Record<string, string>] {
  // One process, whatever this shell has set: WORKERS would fork processes that run outside
  // valgrind, REDIS_URL would move the rate limit to Redis. HOST is left alone: valgrind names
  // the files callgrind_control reaches it through after the USER and HOST it was started with.
  const env = { WORKERS: "1", REDIS_URL: "" };
  if (args.server === "ceiling") {
    return [CEILING_ENTRY, env];
  }
  return [
    startArguments(ROOT),
    {
      ...env,
      DATABASE_URL: `sqlite://${join(dir, "identity.db")}`,
      CACHE: "off",
      MAX_REQUESTS_PER_SOCKET: "0",
    },
  ];
}

/** The instructions of each thread's file: callgrind writes `out-01` for the main thread. */
function instructionsByThread(dir: string): Map<string, number> {
  const threads = new Map<string, number>();
  for (const file of readdirSync(dir).filter((name) => name.startsWith("callgrind.out-"))) {
    const total = /^totals: (\d+)/m.exec(readFileSync(join(dir, file), "utf8"))?.[1];
    if (total === undefined) {
      throw new Error(`no totals in ${file}`);
    }
    threads.set(file.slice("callgrind.out-".length), Number(total));
  }
  return threads;
}

/** One run: a new server (and database) under callgrind; instructions per measured request. */
async function run(): Promise<Count> {
  const dir = mkdtempSync(join(tmpdir(), "idr-instructions-"));
  const [entry, env] = serverCommand(dir);
  const valgrind = [
    "--tool=callgrind",
    "--instr-atstart=no",
    "--separate-threads=yes",
    `--callgrind-out-file=${join(dir, "callgrind.out")}`,
    process.execPath,
    ...entry,
  ];
  let server: ServerProcess | null = null;
  try {
    const running = await startServer(env, valgrind, {
      command: "valgrind",
      cwd: ROOT,
      startTimeoutMs: START_TIMEOUT_MS,
    });
    server = running;
    const workload = new Workload("instructions", 42, MIX);
    workload.populate(1000);
    const drive = (amount: number) =>
      autocannon({
        url: `${running.url}/identify`,
        connections: 32,
        amount,
        timeout: 120,
        requests: identifyRequests(workload),
      });
    await drive(WARMUP);
    const pid = String(running.process.pid);
    execFileSync("callgrind_control", ["--instr=on", pid], { stdio: "ignore" });
    const measured = await drive(REQUESTS);
    execFileSync("callgrind_control", ["--instr=off", pid], { stdio: "ignore" });
    if (measured.non2xx > 0 || measured.errors > 0) {
      throw new Error(`${measured.non2xx} non-2xx answers and ${measured.errors} errors`);
    }
    await running.stop();
    const threads = instructionsByThread(dir);
    const main = threads.get("01") ?? 0;
    if (main === 0) {
      throw new Error(
        `no instructions counted on the main thread (files: ${[...threads.keys()].join(", ")})`,
      );
    }
    const all = [...threads.values()].reduce((sum, count) => sum + count, 0);
    const answered = measured.requests.total;
    return { main: Math.round(main / answered), all: Math.round(all / answered) };
  } finally {
    await server?.stop();
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
