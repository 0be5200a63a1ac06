/**
 * `npm run bench`: starts the server for each configuration, seeds a population, drives
 * POST /identify with autocannon (32 connections, the issue's mix) and measures the framework's
 * ceiling in the same run, next to each configuration. Prints a table and writes JSON to
 * benchmarks/results/.
 *
 * Options: --customers N (10000), --duration S (10), --connections N (32), --bulk (load rows
 * directly instead of through the API), --configs a,b (sqlite, mysql, postgres, sqlite-memcache,
 * mysql-nocache, postgres-nocache), --workers N (server processes), --mix R,I,C,B (percent of
 * repeats, new information, new customers, bridges: 85,10,4,1), --rounds N (1: measure the
 * ceiling and each configuration alternately N times, and report the round of the median ratio),
 * --out FILE.
 * Servers: BENCH_MYSQL_URL, BENCH_POSTGRES_URL, BENCH_REDIS_URL (defaults: this machine's).
 */
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { cpus, totalmem } from "node:os";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import autocannon from "autocannon";
import { Redis } from "ioredis";
import { sql } from "kysely";
import type { Kysely } from "kysely";
import { openDatabase } from "../src/storage/database.js";
import type { Database, DialectName } from "../src/storage/database.js";
import { migrateToLatest } from "../src/storage/migrate.js";
import { keepMissingAnswers } from "../src/storage/migrations/0003-create-customer-answer.js";
import { createTestDatabase } from "../test/support/databases.js";
import type { TestDatabase } from "../test/support/databases.js";
import { startServer } from "../test/support/server.js";
import type { ServerProcess } from "../test/support/server.js";
import { CEILING_ENTRY, identifyRequests, startArguments } from "./servers.js";
import { parseMix, Workload } from "./workload.js";
import type { Body } from "./workload.js";

const { values: args } = parseArgs({
  options: {
    customers: { type: "string", default: "10000" },
    duration: { type: "string", default: "10" },
    connections: { type: "string", default: "32" },
    configs: {
      type: "string",
      default: "sqlite,mysql,postgres,sqlite-memcache,mysql-nocache,postgres-nocache",
    },
    bulk: { type: "boolean", default: false },
    workers: { type: "string", default: "1" },
    mix: { type: "string", default: "85,10,4,1" },
    rounds: { type: "string", default: "1" },
    out: { type: "string" },
  },
});

const MYSQL = process.env.BENCH_MYSQL_URL ?? "mysql://root@127.0.0.1:3306/test";
const POSTGRES = process.env.BENCH_POSTGRES_URL ?? "postgres://root@127.0.0.1:5432/test";
const REDIS = process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379";
const CUSTOMERS = Number(args.customers);
const DURATION = Number(args.duration);
const CONNECTIONS = Number(args.connections);
const MEASURED_MIX = parseMix(args.mix);
const ROUNDS = Number(args.rounds);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) {
  throw new Error(`--rounds must be a whole number of at least 1, not ${args.rounds}`);
}

interface ConfigSpec {
  readonly name: string;
  readonly dialect: DialectName | null;
  readonly cache: "memory" | "redis" | "off" | null;
}

const SPECS: Record<string, ConfigSpec> = {
  sqlite: { name: "SQLite (default: no cache)", dialect: "sqlite", cache: "off" },
  "sqlite-memcache": { name: "SQLite, in-process cache", dialect: "sqlite", cache: "memory" },
  mysql: { name: "MariaDB + Redis", dialect: "mysql", cache: "redis" },
  "mysql-nocache": { name: "MariaDB, cache off", dialect: "mysql", cache: "off" },
  postgres: { name: "PostgreSQL + Redis", dialect: "postgres", cache: "redis" },
  "postgres-nocache": { name: "PostgreSQL, cache off", dialect: "postgres", cache: "off" },
};

interface Result {
  config: string;
  requestsPerSecond: number;
  latencyMs: { p50: number; p99: number; max: number };
  errors: number;
  non2xx: number;
  maxRssMb: number;
  /** The server's CPU time (all its processes) per answered request, in microseconds. */
  cpuUsPerRequest: number | null;
  storedContacts: number | null;
  ratioToCeiling?: number;
  /** The ceiling measured just before this configuration, which the ratio divides by. */
  ceilingRequestsPerSecond?: number;
  /**
   * With --rounds: every round's ratio, in order; the row's figures are the median round's, but
   * for errors and non-2xx (summed over every round) and RSS (the peak of every round).
   */
  roundRatios?: number[];
  /** Percent of the measured requests by outcome/source (from the server's metrics). */
  outcomes?: Record<string, number>;
}

function log(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

/** What `npm start` runs after `node`, so both run the same. */
const SERVER_COMMAND = startArguments(fileURLToPath(new URL("..", import.meta.url)));

/** Sums `read(pid)` over a process and its children (the workers); a process gone counts 0. */
function sumOverTree(pid: number, read: (pid: number) => number): number {
  let total = 0;
  const visit = (p: number) => {
    try {
      total += read(p);
      const children = readFileSync(`/proc/${p}/task/${p}/children`, "utf8").trim();
      for (const child of children.split(/\s+/).filter(Boolean)) {
        visit(Number(child));
      }
    } catch {
      // the process is gone
    }
  };
  visit(pid);
  return total;
}

/** Resident memory of a process and its children (the workers), in MB. */
function rssMb(pid: number): number {
  return sumOverTree(pid, (p) => {
    const status = readFileSync(`/proc/${p}/status`, "utf8");
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
  });
}

/** A process's command name and CPU ticks (user + system), from `/proc/PID/stat`. */
function processStat(pid: number | string): { name: string; ticks: number; reaped: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th,
  // cutime and cstime (of the children that ended and were waited for) the 14th and 15th.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return {
    name: stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")),
    ticks: Number(fields[11]) + Number(fields[12]),
    reaped: Number(fields[13]) + Number(fields[14]),
  };
}

/** CPU time (user + system) of a process and its children (the workers), in seconds. */
function cpuSeconds(pid: number): number {
  return sumOverTree(pid, (p) => processStat(p).ticks) / CLOCK_TICKS_PER_SECOND;
}

/**
 * CPU time (user + system), in seconds, of this machine's database servers and Redis, when they
 * run here (0 when they run elsewhere), from one pass over `/proc`. A server process that ended
 * counts through its parent's time of reaped children (PostgreSQL's postmaster waits for each
 * backend), so a connection closed meanwhile does not take its time with it.
 */
function serverCpuSeconds(): { database: number; redis: number } {
  let database = 0;
  let redis = 0;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) {
      continue;
    }
    try {
      const { name, ticks, reaped } = processStat(entry);
      if (DATABASE_SERVERS.test(name)) {
        database += ticks + reaped;
      } else if (REDIS_SERVER.test(name)) {
        redis += ticks + reaped;
      }
    } catch {
      // the process is gone
    }
  }
  return { database: database / CLOCK_TICKS_PER_SECOND, redis: redis / CLOCK_TICKS_PER_SECOND };
}

const DATABASE_SERVERS = /^(mariadbd|mysqld|postgres)$/;
const REDIS_SERVER = /^redis-server$/;

/** Busy CPU time of the whole machine (every process and the kernel), in seconds. */
function machineCpuSeconds(): number {
  const fields = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "").trim().split(/\s+/);
  // cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait.
  const [user, nice, system, , , irq, softirq, steal] = fields.slice(1).map(Number);
  return (
    ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) /
    CLOCK_TICKS_PER_SECOND
  );
}

/** Linux's USER_HZ, the unit of /proc's CPU times, on every architecture Node runs on. */
const CLOCK_TICKS_PER_SECOND = 100;

const agent = new Agent({ keepAlive: true, maxSockets: CONNECTIONS });

function post(url: string, body: Body): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(`${url}/identify`, {
      method: "POST",
      agent,
      headers: { "content-type": "application/json" },
    });
    req.on("response", (res) => {
      res.resume();
      res.on("end", () => {
        resolve(res.statusCode ?? 0);
      });
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

async function seedThroughApi(url: string, plans: Body[][]): Promise<void> {
  let next = 0;
  let failed = 0;
  const worker = async () => {
    while (next < plans.length) {
      const plan = plans[next++] ?? [];
      for (const body of plan) {
        if ((await post(url, body)) !== 200) {
          failed++;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: CONNECTIONS }, worker));
  if (failed > 0) {
    throw new Error(`${failed} seeding requests failed`);
  }
}

async function bulkLoad(test: TestDatabase, workload: Workload): Promise<void> {
  const database = openDatabase(test.target, { poolSize: 2, lockTimeoutMs: 10000 });
  await migrateToLatest(database);
  const base = Date.UTC(2024, 0, 1);
  const time = (ms: number) =>
    test.dialect === "sqlite" ? new Date(ms).toISOString() : new Date(ms);
  let id = 0;
  let batch: {
    id: number;
    email: string | null;
    phoneNumber: string | null;
    linkedId: number | null;
    linkPrecedence: "primary" | "secondary";
    createdAt: Date | string;
    updatedAt: Date | string;
  }[] = [];
  const flush = async () => {
    if (batch.length > 0) {
      await database.db.insertInto("Contact").values(batch).execute();
      batch = [];
    }
  };
  for (const person of workload.customers()) {
    const primary = ++id;
    const [email, ...emails] = person.emails;
    const [phone, ...phones] = person.phones;
    const row = (e: string | undefined, p: string | undefined, linked: number | null) => {
      const rowId = linked === null ? primary : ++id;
      batch.push({
        id: rowId,
        email: e ?? null,
        phoneNumber: p ?? null,
        linkedId: linked,
        linkPrecedence: linked === null ? "primary" : "secondary",
        createdAt: time(base + rowId),
        updatedAt: time(base + rowId),
      });
    };
    row(email, phone, null);
    for (const e of emails) {
      row(e, phone, primary);
    }
    for (const p of phones) {
      row(email, p, primary);
    }
    if (batch.length >= 900) {
      await flush();
    }
  }
  await flush();
  if (test.dialect === "sqlite") {
    // What migration 0003 does for the customers stored before it: their answers, kept.
    await database.db
      .transaction()
      .execute((trx) => keepMissingAnswers(trx as unknown as Kysely<unknown>));
  }
  if (test.dialect === "postgres") {
    await sql`select setval(pg_get_serial_sequence('"Contact"', 'id'), (select max(id) from "Contact"))`.execute(
      database.db,
    );
  }
  await database.destroy();
}

/** The server's /metrics, as text. */
async function scrape(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

/** identify_outcomes_total by "outcome/source", from a scrape of /metrics. */
function outcomeCounts(text: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const match of text.matchAll(
    /^identify_outcomes_total\{outcome="(\w+)",source="(\w+)"\} (\d+)/gm,
  )) {
    counts[`${match[1] ?? ""}/${match[2] ?? ""}`] = Number(match[3]);
  }
  return counts;
}

/** cache_operations_total by result (hit, miss, emptied, …), from a scrape; zeros left out. */
function cacheCounts(text: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const match of text.matchAll(/^cache_operations_total\{result="(\w+)"\} (\d+)/gm)) {
    if (Number(match[2]) > 0) {
      counts[match[1] ?? ""] = Number(match[2]);
    }
  }
  return counts;
}

/** The server's memory by kind, in MB, from the Node.js metrics of a scrape. */
function memoryMb(text: string): Record<string, number> {
  const memory: Record<string, number> = {};
  for (const match of text.matchAll(
    /^(?:process_resident_memory|nodejs_heap_size_total|nodejs_heap_size_used|nodejs_external_memory)_bytes(?:\{[^}]*\})? (\d+)/gm,
  )) {
    const name = match[0].split(/[ {]/)[0]?.replace(/^(process|nodejs)_|_bytes$/g, "") ?? "";
    memory[name] = Math.round(Number(match[1]) / 1048576);
  }
  return memory;
}

/** SQLite's average transactions per committed batch, reads and writes, from a scrape. */
function sqliteBatchSizes(text: string): Record<string, number> | null {
  const read = (name: string, kind: string) =>
    Number(new RegExp(`^${name}\\{kind="${kind}"\\} (\\d+)`, "m").exec(text)?.[1] ?? NaN);
  const sizes: Record<string, number> = {};
  for (const kind of ["read", "write"]) {
    const batches = read("db_sqlite_batches_total", kind);
    const transactions = read("db_sqlite_batched_transactions_total", kind);
    if (batches > 0) {
      sizes[kind] = Math.round((transactions / batches) * 10) / 10;
    }
  }
  return Object.keys(sizes).length > 0 ? sizes : null;
}

/** Share of each outcome/source among the requests answered between two scrapes. */
function outcomeShares(
  before: Record<string, number>,
  after: Record<string, number>,
): Record<string, number> {
  const delta = Object.entries(after).map(([key, n]) => [key, n - (before[key] ?? 0)] as const);
  const total = delta.reduce((sum, [, n]) => sum + n, 0);
  return Object.fromEntries(
    delta.filter(([, n]) => n > 0).map(([key, n]) => [key, Math.round((n / total) * 1000) / 10]),
  );
}

/** Runs `work` on a connection of its own to the test database. */
async function withDatabase<T>(test: TestDatabase, work: (db: Database["db"]) => Promise<T>) {
  const database = openDatabase(test.target, { poolSize: 1, lockTimeoutMs: 10000 });
  try {
    return await work(database.db);
  } finally {
    await database.destroy();
  }
}

async function analyze(test: TestDatabase): Promise<void> {
  await withDatabase(test, (db) => sql`analyze "Contact"`.execute(db));
}

async function countContacts(test: TestDatabase): Promise<number> {
  const row = await withDatabase(test, (db) =>
    db
      .selectFrom("Contact")
      .select((eb) => eb.fn.countAll<number | string>().as("n"))
      .executeTakeFirstOrThrow(),
  );
  return Number(row.n);
}

async function load(url: string, workload: Workload, seconds: number, pid: number | null) {
  let maxRss = 0;
  const cpuBefore = pid === null ? 0 : cpuSeconds(pid);
  const ownBefore = process.cpuUsage();
  const machineBefore = machineCpuSeconds();
  const serversBefore = serverCpuSeconds();
  const sampler =
    pid === null
      ? null
      : setInterval(() => {
          maxRss = Math.max(maxRss, rssMb(pid));
        }, 200);
  const result = await autocannon({
    url: `${url}/identify`,
    connections: CONNECTIONS,
    duration: seconds,
    requests: identifyRequests(workload),
  });
  if (sampler !== null) {
    clearInterval(sampler);
  }
  const answered = result.requests.total;
  const own = process.cpuUsage(ownBefore);
  if (pid !== null && answered > 0) {
    const perRequest = (seconds: number) => Math.round((seconds * 1e6) / answered);
    const servers = serverCpuSeconds();
    log(
      `CPU per request: load generator ${perRequest((own.user + own.system) / 1e6)} µs, ` +
        `database servers ${perRequest(servers.database - serversBefore.database)} µs, ` +
        `Redis ${perRequest(servers.redis - serversBefore.redis)} µs, ` +
        `whole machine ${perRequest(machineCpuSeconds() - machineBefore)} µs`,
    );
  }
  return {
    requestsPerSecond: Math.round(result.requests.average),
    latencyMs: { p50: result.latency.p50, p99: result.latency.p99, max: result.latency.max },
    errors: result.errors + result.timeouts,
    non2xx: result.non2xx,
    maxRssMb: Math.round(maxRss),
    cpuUsPerRequest:
      pid === null || answered === 0
        ? null
        : Math.round(((cpuSeconds(pid) - cpuBefore) * 1e6) / answered),
  };
}

type Measurement = Awaited<ReturnType<typeof load>>;

/** One round of a configuration: the ceiling measured just before it, and its own figures. */
interface Round {
  readonly ceiling: Measurement;
  readonly measured: Measurement;
  readonly ratio: number;
}

/**
 * The item of the median value (the upper one of the middle two for an even count), so that
 * every figure reported with it comes from one measurement; undefined for none.
 */
function medianBy<T>(items: readonly T[], value: (item: T) => number): T | undefined {
  return [...items].sort((a, b) => value(a) - value(b))[Math.floor(items.length / 2)];
}

function twoDecimals(value: number): number {
  return Math.round(value * 100) / 100;
}

/**
 * Measures one configuration in ROUNDS rounds, each right after a measurement of the ceiling
 * (added to `ceilings`); the first ceiling before the database is created and seeded, as a
 * single round always did, the later ones while the configuration's server waits idle.
 */
async function runConfig(
  key: string,
  spec: ConfigSpec,
  ceilings: Measurement[],
): Promise<Result | null> {
  if (spec.dialect === null) {
    return null;
  }
  // The ceiling is measured again next to each configuration: on a shared machine its figure
  // drifts by tens of percent within minutes, and each ratio compares like with like.
  log(`${key}: ceiling first (bare Fastify route, same body validation, constant answer)`);
  const firstCeiling = await measureCeiling();
  ceilings.push(firstCeiling);
  const admin =
    spec.dialect === "mysql" ? MYSQL : spec.dialect === "postgres" ? POSTGRES : undefined;
  let test: TestDatabase;
  try {
    test = await createTestDatabase(spec.dialect, admin);
  } catch (error) {
    log(`${key}: skipped, ${error instanceof Error ? error.message : String(error)}`);
    return null;
  }
  const prefix = `bench:${Date.now()}:`;
  const workload = new Workload(`${key}${Date.now()}`, 42, MEASURED_MIX);
  const env: Record<string, string> = {
    DATABASE_URL: test.url,
    CACHE: spec.cache === "off" ? "off" : "on",
    CACHE_PREFIX: prefix,
    WORKERS: args.workers,
    // autocannon keeps sending on a connection answered with "Connection: close", and Node
    // answers 503 to what comes after MAX_REQUESTS_PER_SOCKET (10,000 by default): past 10,000
    // requests a connection (32 connections for 10 s: 32,000 req/s) that limit, not the server,
    // would fail requests. Real keep-alive clients reconnect.
    MAX_REQUESTS_PER_SOCKET: "0",
  };
  if (spec.cache === "redis") {
    env.REDIS_URL = REDIS;
  }
  let server: ServerProcess | null = null;
  try {
    if (args.bulk) {
      workload.populate(CUSTOMERS);
      log(`${key}: bulk-loading ${CUSTOMERS} customers`);
      await bulkLoad(test, workload);
    }
    const profile = process.env.BENCH_CPU_PROF;
    server = await startServer(
      env,
      profile
        ? ["--cpu-prof", `--cpu-prof-dir=${profile}`, ...SERVER_COMMAND]
        : [...SERVER_COMMAND],
    );
    if (!args.bulk) {
      log(`${key}: seeding ${CUSTOMERS} customers through the API`);
      await seedThroughApi(server.url, workload.populate(CUSTOMERS));
    }
    if (spec.dialect === "postgres") {
      // As autovacuum would have, many times over while the table grew (this machine runs
      // PostgreSQL with autovacuum off): the prepared statements' plans are made again.
      await analyze(test);
    }
    log(`${key}: warming up`);
    await load(server.url, workload, 3, null);
    const before = outcomeCounts(await scrape(server.url));
    const rounds: Round[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const roundLabel = ROUNDS > 1 ? ` (round ${round} of ${ROUNDS})` : "";
      let ceiling = firstCeiling;
      if (round > 1) {
        log(`${key}: ceiling again${roundLabel}`);
        ceiling = await measureCeiling();
        ceilings.push(ceiling);
      }
      log(`${key}: measuring for ${DURATION}s${roundLabel}`);
      const measured = await load(server.url, workload, DURATION, server.process.pid ?? null);
      const ratio = measured.requestsPerSecond / ceiling.requestsPerSecond;
      rounds.push({ ceiling, measured, ratio });
    }
    const after = await scrape(server.url);
    const outcomes = outcomeShares(before, outcomeCounts(after));
    log(`${key}: outcomes (%) ${JSON.stringify(outcomes)}`);
    log(`${key}: memory after the run (MB) ${JSON.stringify(memoryMb(after))}`);
    log(`${key}: cache operations since start ${JSON.stringify(cacheCounts(after))}`);
    const batches = sqliteBatchSizes(after);
    if (batches !== null) {
      log(`${key}: SQLite transactions per batch since start ${JSON.stringify(batches)}`);
    }
    await server.stop();
    server = null;
    const chosen = medianBy(rounds, (r) => r.ratio);
    if (chosen === undefined) {
      throw new Error("no round was measured");
    }
    if (ROUNDS > 1) {
      log(`${key}: ratios by round ${rounds.map((r) => twoDecimals(r.ratio)).join(", ")}`);
    }
    return {
      config: spec.name,
      ...chosen.measured,
      // Failures and memory count every round, not only the median one.
      errors: rounds.reduce((sum, r) => sum + r.measured.errors, 0),
      non2xx: rounds.reduce((sum, r) => sum + r.measured.non2xx, 0),
      maxRssMb: Math.max(...rounds.map((r) => r.measured.maxRssMb)),
      storedContacts: await countContacts(test),
      outcomes,
      ceilingRequestsPerSecond: chosen.ceiling.requestsPerSecond,
      ratioToCeiling: twoDecimals(chosen.ratio),
      ...(ROUNDS > 1 ? { roundRatios: rounds.map((r) => twoDecimals(r.ratio)) } : {}),
    };
  } finally {
    await server?.stop();
    await test.drop();
    if (spec.cache === "redis") {
      const redis = new Redis(REDIS);
      const keys = await redis.keys(`${prefix}*`);
      for (let i = 0; i < keys.length; i += 1000) {
        await redis.del(...keys.slice(i, i + 1000));
      }
      redis.disconnect();
    }
  }
}

/** One measurement of the ceiling: the bare Fastify route under the same load. */
async function measureCeiling() {
  const ceilingServer = await startServer({}, CEILING_ENTRY);
  try {
    const ceilingWorkload = new Workload("ceiling", 42, MEASURED_MIX);
    ceilingWorkload.populate(1000);
    await load(ceilingServer.url, ceilingWorkload, 3, null);
    return await load(
      ceilingServer.url,
      ceilingWorkload,
      DURATION,
      ceilingServer.process.pid ?? null,
    );
  } finally {
    await ceilingServer.stop();
  }
}

/** The ratio, and with --rounds the range of every round's. */
function ratioCell(result: Result): string {
  const ratio = result.ratioToCeiling?.toFixed(2) ?? "";
  const all = result.roundRatios;
  if (all === undefined) {
    return ratio;
  }
  return `${ratio} (${Math.min(...all).toFixed(2)}–${Math.max(...all).toFixed(2)})`;
}

async function main(): Promise<void> {
  const results: Result[] = [];
  const ceilings: Measurement[] = [];
  for (const key of args.configs.split(",").filter(Boolean)) {
    const spec = SPECS[key];
    if (spec === undefined) {
      throw new Error(`unknown configuration ${key}; known: ${Object.keys(SPECS).join(", ")}`);
    }
    const result = await runConfig(key, spec, ceilings);
    if (result !== null) {
      results.push(result);
    }
  }
  // The ceiling's row: its median measurement.
  const ceiling = medianBy(ceilings, (c) => c.requestsPerSecond);
  if (ceiling !== undefined) {
    results.unshift({
      config: `ceiling (Fastify, constant answer; median of ${ceilings.length})`,
      ...ceiling,
      storedContacts: null,
      ceilingRequestsPerSecond: ceiling.requestsPerSecond,
      ratioToCeiling: 1,
    });
  }

  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
  const header = `customers ${CUSTOMERS}${args.bulk ? " (bulk-loaded)" : ""}, mix ${args.mix}, ${CONNECTIONS} connections, ${DURATION}s${ROUNDS > 1 ? ` × ${ROUNDS} rounds` : ""}, workers ${args.workers}; ${machine}`;
  const lines = [
    header,
    "",
    "| configuration | req/s | ceiling req/s | × ceiling | p50 ms | p99 ms | max ms | errors | non-2xx | RSS MB | CPU µs/req | contacts |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...results.map(
      (r) =>
        `| ${r.config} | ${r.requestsPerSecond} | ${r.ceilingRequestsPerSecond ?? ""} | ${ratioCell(r)} | ${r.latencyMs.p50} | ${r.latencyMs.p99} | ${r.latencyMs.max} | ${r.errors} | ${r.non2xx} | ${r.maxRssMb} | ${r.cpuUsPerRequest ?? ""} | ${r.storedContacts ?? ""} |`,
    ),
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
  const out =
    args.out ?? `benchmarks/results/${new Date().toISOString().replace(/[:.]/g, "-")}.json`;
  mkdirSync(new URL("results/", import.meta.url).pathname, { recursive: true });
  writeFileSync(out, `${JSON.stringify({ header, machine, results }, null, 2)}\n`);
  log(`wrote ${out}`);
  agent.destroy();
}

await main();
