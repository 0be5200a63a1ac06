import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { Redis } from "ioredis";
import type { RedisOptions } from "ioredis";
import type { Customer, IdentifyRequest } from "../domain/contact.js";
import { endOfTurn } from "../end-of-turn.js";
import { customerHolds, identifierDigest, identifierKeys } from "../domain/contact.js";
import { customerDigest, emptyStats, leadOf, MISS, versionOf } from "./customer-cache.js";
import type {
  CacheDebt,
  CacheDebtLedger,
  CacheLookup,
  CacheStats,
  CustomerCache,
  FillTicket,
} from "./customer-cache.js";

export interface RedisCacheOptions {
  readonly url: string;
  /** Prepended to every key, e.g. `identity:v1:`. */
  readonly prefix: string;
  readonly ttlSeconds: number;
  /** A command slower than this counts as a failure; the request goes on without the cache. */
  readonly timeoutMs: number;
  /**
   * Where a publication that failed is recorded before the writer answers, for any instance to
   * pay (the database); without one, the debt lives in this instance's memory only.
   */
  readonly ledger?: CacheDebtLedger;
  /** How often the ledger is read for debts to pay while Redis is reachable; 1000 by default. */
  readonly ledgerPollMs?: number;
}

/** Debts read from the ledger at a time, and pages paid at most per poll. */
const LEDGER_PAGE = 100;
const LEDGER_PAGES_PER_POLL = 50;

/** What the cache tells its operator: a state change, with the reason. */
export interface CacheEvents {
  readonly onUnavailable?: (reason: string) => void;
  readonly onAvailable?: () => void;
  /** Something the operator should know that does not stop the cache. */
  readonly onWarning?: (message: string) => void;
}

// The lookups of one turn of the event loop, in one script (see `lookup`). KEYS: each lookup's
// two index keys (the same key twice for a one-identifier request). ARGV: prefix, a token unique
// to the call (a lookup's own generation token is it plus ":n"), the generation TTL in seconds.
// Returns one result per lookup, in order: false (nothing indexed, or a lead short of a live
// customer), {digest, entry} on an entry, {digest, "", generation} on a miss with a ticket,
// {"", entries...} when the identifiers do not name one customer (the lead). The customer keys
// are derived from the index values inside the script.
const LOOKUP_SCRIPT = `
local function lookup(key1, key2, prefix, token, generationTtl)
  local digest = redis.call('GET', key1)
  local other = digest
  if key2 ~= key1 then other = redis.call('GET', key2) end
  if not digest and not other then return false end
  if digest ~= other then
    -- Not one customer for every identifier: a miss without a ticket, with the entries of the
    -- customers the index names, for the caller's lead. Only if each is a live customer: one
    -- gone, merged away (a tombstone) or owed (a floor marker) would leave the lead short of a
    -- customer the request reaches, which the transaction would then lock out of order.
    local found = {''}
    for _, named in ipairs({digest or '', other or ''}) do
      if named ~= '' then
        local entry = redis.call('GET', prefix .. named)
        if not entry or string.find(entry, '"demoted"', 1, true)
            or string.find(entry, '"floor"', 1, true) then
          return false
        end
        found[#found + 1] = entry
      end
    end
    return found
  end
  local entry = redis.call('GET', prefix .. digest)
  -- A floor marker ({"floor":n}, left by a writer whose publication failed) is no answer: a miss
  -- with a ticket, whose fill must bring version n or newer. No customer JSON contains '"floor"'.
  if entry and not string.find(entry, '"floor"', 1, true) then return {digest, entry} end
  local generationKey = prefix .. 'gen:' .. digest
  local generation = redis.call('GET', generationKey)
  if not generation then
    redis.call('SET', generationKey, token, 'EX', generationTtl)
    generation = token
  end
  return {digest, '', generation}
end
local results = {}
for i = 1, #KEYS, 2 do
  local n = #results + 1
  results[n] = lookup(KEYS[i], KEYS[i + 1], ARGV[1], ARGV[2] .. ':' .. n, ARGV[3])
end
return results
`;

const TOMBSTONE = '{"demoted":true}';

// True when the entry at KEYS[1] may be replaced by a customer of version ARGV[version]: absent,
// or an older version; never a tombstone.
const NEWER = `
local function newer(key, version)
  local current = redis.call('GET', key)
  if not current then return true end
  -- An entry that is not one of ours (not JSON, no version) is replaced, not an error: an error
  -- would fail every script that meets it (a ledger's page of debts would never be paid).
  local ok, entry = pcall(cjson.decode, current)
  if not ok or type(entry) ~= 'table' then return true end
  if entry.demoted then return false end
  if entry.floor then return version >= entry.floor end
  if type(entry.secondaryContactIds) ~= 'table' then return true end
  return #entry.secondaryContactIds + 1 < version
end
`;

// Pairs of keys from KEYS[first] on: a secondary's customer key and generation key. An entry
// there that is still a customer is left by a writer that merged it away and never published:
// it becomes a tombstone, with a new generation. Returns how many did.
const DEMOTE_SECONDARIES = `
local function demote_secondaries(first, tombstone, ttl, token, generationTtl)
  local demoted = 0
  for i = first, #KEYS, 2 do
    local entry = redis.call('GET', KEYS[i])
    if entry and not string.find(entry, '"demoted"', 1, true) then
      redis.call('SET', KEYS[i], tombstone, 'EX', ttl)
      redis.call('SET', KEYS[i + 1], token, 'EX', generationTtl)
      demoted = demoted + 1
    end
  end
  return demoted
end
`;

// KEYS: customer key, generation key, the two index keys, then the secondaries' pairs.
// ARGV: ticket generation, customer JSON, TTL, digest, generation TTL, version, new token,
// tombstone. Returns {stored (0 or 1), repairs}.
const FILL_SCRIPT = `${NEWER}${DEMOTE_SECONDARIES}
local repairs = demote_secondaries(5, ARGV[8], ARGV[3], ARGV[7], ARGV[5])
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0, repairs} end
if not newer(KEYS[1], tonumber(ARGV[6])) then return {0, repairs} end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3])
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[3])
return {1, repairs}
`;

// KEYS: customer key, generation key, the two index keys, then per demoted primary its customer
// key and generation key. ARGV: customer JSON, TTL, digest, generation TTL, version, new token,
// tombstone.
const PUBLISH_SCRIPT = `${NEWER}
redis.call('SET', KEYS[2], ARGV[6], 'EX', ARGV[4])
if newer(KEYS[1], tonumber(ARGV[5])) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[2])
for i = 5, #KEYS, 2 do
  redis.call('SET', KEYS[i], ARGV[7], 'EX', ARGV[2])
  redis.call('SET', KEYS[i + 1], ARGV[6], 'EX', ARGV[4])
end
return 1
`;

// KEYS: the two index keys, the customer key, then per secondary its customer key and generation
// key. ARGV: digest, TTL, customer JSON, version, generation TTL, new token, tombstone.
// Points the index at the customer; replaces an existing older entry of it (never creates one);
// turns a secondary's entry that is still a customer into a tombstone. Returns the repairs made.
const HINT_SCRIPT = `${NEWER}${DEMOTE_SECONDARIES}
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
local repairs = demote_secondaries(4, ARGV[7], ARGV[2], ARGV[6], ARGV[5])
if redis.call('EXISTS', KEYS[3]) == 1 and newer(KEYS[3], tonumber(ARGV[4])) then
  redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[2])
  repairs = repairs + 1
end
return repairs
`;

// KEYS: customer key, generation key. ARGV: "floor" or "tombstone", version, TTL, generation TTL,
// new token. Pays a publication that failed: a tombstone, or a floor that refuses any entry older
// than the version the writer answered with (an older entry there is dropped).
const SETTLE_SCRIPT = `${NEWER}
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[4])
if ARGV[1] == 'tombstone' then
  redis.call('SET', KEYS[1], '{"demoted":true}', 'EX', ARGV[3])
elseif newer(KEYS[1], tonumber(ARGV[2])) then
  redis.call('SET', KEYS[1], cjson.encode({floor = tonumber(ARGV[2])}), 'EX', ARGV[3])
end
return 1
`;

/** True when `owed` is at least as strong as `debt`: a tombstone, or a floor as high or higher. */
function outranks(owed: CacheDebt | undefined, debt: CacheDebt): boolean {
  return (
    owed?.kind === "tombstone" ||
    (owed?.kind === "floor" && debt.kind === "floor" && owed.version >= debt.version)
  );
}

/** One lookup's result: [digest, entry, generation?], or ['', ...entries] (the lead's). */
type LookupResult = [string, ...string[]];

/** A lookup waiting for the end of its turn of the event loop (see `lookup`). */
interface QueuedLookup {
  readonly request: IdentifyRequest;
  /** The namespace its index keys are under. */
  readonly ns: string;
  readonly keys: readonly [string, string];
  readonly resolve: (lookup: CacheLookup) => void;
}

interface ScriptedRedis {
  identityLookup(
    keyCount: number,
    ...keysAndArgs: (string | number)[]
  ): Promise<(LookupResult | null)[]>;
  identityFill(
    keyCount: number,
    ...keysAndArgs: (string | number)[]
  ): Promise<[stored: number, repairs: number]>;
  identityPublish(keyCount: number, ...keysAndArgs: (string | number)[]): Promise<number>;
  identityHint(keyCount: number, ...keysAndArgs: (string | number)[]): Promise<number>;
}

/**
 * ioredis options for Redis as an accelerator (the cache, the shared rate limit): commands time
 * out after `timeoutMs`, nothing is queued while disconnected, reconnects back off to 1 s.
 */
export function acceleratorRedisOptions(timeoutMs: number): RedisOptions {
  return {
    commandTimeout: timeoutMs,
    // Commands issued in one event-loop turn (many requests' lookups) go out in one write: on
    // this kind of machine a socket write costs more than the command.
    enableAutoPipelining: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt) => Math.min(50 * attempt, 1000),
  };
}

/**
 * The cache in Redis, shared by every instance. Redis is an accelerator: commands time out after
 * `timeoutMs`, nothing is queued while it is disconnected (ioredis reconnects on its own), and
 * every failure degrades to a database read. A publication that fails is owed (the entry dropped,
 * the tombstones written) and retried; until it goes through, this instance neither reads nor
 * fills the cache. With a ledger, the debt is also recorded in the database before the writer
 * answers, and every instance pays the ledger's debts while it reaches Redis: so another instance
 * stops answering the state before that write within a poll, and a debt survives its instance.
 */
export class RedisCustomerCache implements CustomerCache {
  readonly kind = "redis" as const;
  private readonly redis: Redis;
  private readonly scripted: ScriptedRedis;
  /** The connection, for another user of the same Redis (the rate limiter) to share. */
  get client(): Redis {
    return this.redis;
  }
  private readonly counters = emptyStats();
  /** Writes owed to Redis: per primary id, drop its entry or make it a tombstone. */
  private readonly pending = new Map<number, CacheDebt>();
  private retryTimer: NodeJS.Timeout | null = null;
  private ledgerTimer: NodeJS.Timeout | null = null;
  /** The ledger's payment under way, if any (one at a time; `close` waits for it). */
  private ledgerPayment: Promise<void> | null = null;
  /**
   * Debts the ledger refused to record (the database failed right after a COMMIT): recorded again
   * at each poll while this instance still owes them.
   */
  private readonly unrecorded = new Map<number, CacheDebt>();
  /** Set while the ledger refuses records, or its payment fails: each logged once per streak. */
  private readonly ledgerFailing = { record: false, payment: false };
  /** Set by `close`: a ledger payment under way stops at its next page. */
  private closing = false;
  private reachable = true;
  /**
   * Where this cache's keys live: the prefix, then the first 12 hex digits of the Redis process's
   * run id and of its replication id, learned at every connection; null until then. A Redis
   * restarted from a snapshot has a new run id, a server promoted to master a new replication id:
   * the entries they bring back, older than answers given since, are never read there (the cache
   * starts empty, which is safe).
   */
  private namespace: string | null = null;
  private readonly namespaceLearned = new EventEmitter();
  /** This turn's lookups, sent together at its end. */
  private queued: QueuedLookup[] = [];
  /** Generation tokens are this process's random id and a counter: unique, and cheap to make. */
  private readonly instance = randomUUID();
  private tokens = 0;

  constructor(
    private readonly options: RedisCacheOptions,
    private readonly events: CacheEvents = {},
  ) {
    this.redis = new Redis(options.url, {
      ...acceleratorRedisOptions(options.timeoutMs),
      // A turn's lookups are one script already, sent at the end of the turn (see `lookup`):
      // written at once, not deferred to the next turn by the auto-pipeline.
      autoPipeliningIgnoredCommands: ["identityLookup"],
      connectTimeout: Math.max(options.timeoutMs * 10, 500),
      lazyConnect: false,
    });
    this.redis.defineCommand("identityLookup", { lua: LOOKUP_SCRIPT });
    this.redis.defineCommand("identityFill", { lua: FILL_SCRIPT });
    this.redis.defineCommand("identityPublish", { lua: PUBLISH_SCRIPT });
    this.redis.defineCommand("identityHint", { lua: HINT_SCRIPT });
    this.redis.defineCommand("identitySettle", { numberOfKeys: 2, lua: SETTLE_SCRIPT });
    this.scripted = this.redis as unknown as ScriptedRedis;
    this.redis.on("error", (error: Error) => {
      this.markUnavailable(error.message);
    });
    this.redis.on("ready", () => {
      void this.learnNamespace();
    });
    this.redis.on("close", () => {
      this.namespace = null;
    });
    if (options.ledger !== undefined) {
      this.ledgerTimer = setInterval(() => {
        this.ledgerPayment ??= this.recordAgain()
          .then(() => this.payLedger())
          .finally(() => {
            this.ledgerPayment = null;
          });
      }, options.ledgerPollMs ?? 1000);
      this.ledgerTimer.unref();
    }
  }

  /**
   * Reads the run id and the replication id of the Redis just connected to, then pays what is
   * owed to it. The run id changes when Redis restarts (from a snapshot, say); the replication id
   * when a server is promoted to master (a failover, and the failback after it).
   */
  private async learnNamespace(): Promise<void> {
    let info: string;
    try {
      info = await this.redis.info();
    } catch (error) {
      // A timeout or a dropped connection: try again, the cache unused meanwhile (every instance
      // must use the same keys, so no guess). ioredis itself needs INFO to become ready.
      this.failed(error);
      setTimeout(() => {
        if (this.redis.status === "ready" && this.namespace === null) {
          void this.learnNamespace();
        }
      }, 1000).unref();
      return;
    }
    const runId = /^run_id:([0-9a-f]{12})/m.exec(info)?.[1];
    const replicationId = /^master_replid:([0-9a-f]{12})/m.exec(info)?.[1];
    const ids = runId === undefined || replicationId === undefined ? null : runId + replicationId;
    if (ids === null) {
      this.events.onWarning?.(
        "Redis reports no run_id or master_replid: cache keys use the bare prefix, so this Redis must not restore them from a snapshot or fail over",
      );
    }
    if (this.redis.status !== "ready") {
      return;
    }
    this.namespace = ids === null ? this.options.prefix : `${this.options.prefix}${ids}:`;
    this.namespaceLearned.emit("learned");
    this.markAvailable();
    await this.flushPending();
  }

  /**
   * Resolves true once connected, or false after `timeoutMs`; the cache works either way (it
   * misses until Redis is reachable), so start-up need not fail on it.
   */
  async waitUntilReady(timeoutMs: number): Promise<boolean> {
    if (this.namespace !== null) {
      return true;
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.namespaceLearned.off("learned", onReady);
        resolve(false);
      }, timeoutMs);
      const onReady = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.namespaceLearned.once("learned", onReady);
    });
  }

  private key(ns: string, digest: string): string {
    return `${ns}${digest}`;
  }

  private generationKey(ns: string, digest: string): string {
    return `${ns}gen:${digest}`;
  }

  private indexKeys(ns: string, request: IdentifyRequest): [string, string] {
    const keys = identifierKeys(request).map((key) => `${ns}idx:${identifierDigest(key)}`);
    const first = keys[0] ?? "";
    return [first, keys[1] ?? first];
  }

  /** Each primary id's customer key and generation key, in pairs (the scripts' key pairs). */
  private keyPairs(ns: string, ids: readonly number[]): string[] {
    const keys: string[] = [];
    for (const id of ids) {
      const digest = customerDigest(id);
      keys.push(this.key(ns, digest), this.generationKey(ns, digest));
    }
    return keys;
  }

  private get generationTtl(): number {
    return this.options.ttlSeconds * 2;
  }

  /**
   * The lookups made in one turn of the event loop (the turn's requests) go to Redis together at
   * its end, as one script: one command for Redis to run and for ioredis to build and parse,
   * where each lookup was one (README, Speed decisions).
   */
  lookup(request: IdentifyRequest): Promise<CacheLookup> {
    const ns = this.namespace;
    if (this.pending.size > 0 || ns === null) {
      this.counters.misses++;
      return Promise.resolve(MISS);
    }
    return new Promise((resolve) => {
      if (this.queued.length === 0) {
        void endOfTurn().then(() => this.runLookups());
      }
      this.queued.push({ request, ns, keys: this.indexKeys(ns, request), resolve });
    });
  }

  /**
   * Runs the queued lookups in one script. Those queued under another namespace than the current
   * one (Redis reconnected meanwhile), or while a publication is owed, miss without asking.
   */
  private async runLookups(): Promise<void> {
    const queued = this.queued;
    this.queued = [];
    const ns = this.namespace;
    const asked: QueuedLookup[] = [];
    for (const lookup of queued) {
      if (lookup.ns === ns && this.pending.size === 0) {
        asked.push(lookup);
      } else {
        this.counters.misses++;
        lookup.resolve(MISS);
      }
    }
    if (asked.length === 0 || ns === null) {
      return;
    }
    let results: (LookupResult | null)[];
    try {
      const keys = asked.flatMap((lookup) => lookup.keys);
      results = await this.scripted.identityLookup(
        keys.length,
        ...keys,
        ns,
        this.nextToken(),
        this.generationTtl,
      );
      this.markAvailable();
    } catch (error) {
      this.failed(error, asked.length);
      this.counters.misses += asked.length;
      for (const lookup of asked) {
        lookup.resolve(MISS);
      }
      return;
    }
    asked.forEach((lookup, i) => {
      try {
        lookup.resolve(this.found(lookup.request, results[i] ?? null));
      } catch (error) {
        // An entry that is not JSON: this lookup misses; the others of the turn are answered.
        this.failed(error);
        this.counters.misses++;
        lookup.resolve(MISS);
      }
    });
  }

  /** A lookup's answer from its script result. */
  private found(request: IdentifyRequest, result: LookupResult | null): CacheLookup {
    if (result === null) {
      this.counters.misses++;
      return MISS;
    }
    const [digest, ...rest] = result;
    if (digest === "") {
      this.counters.misses++;
      const named = rest.map((found) => JSON.parse(found) as Customer);
      return { ...MISS, lead: leadOf(named, request) };
    }
    const [entry = "", generation] = rest;
    if (entry !== "") {
      const parsed = JSON.parse(entry) as Customer | { demoted: true };
      if ("primaryContactId" in parsed && customerHolds(parsed, request)) {
        this.counters.hits++;
        return { customer: parsed, ticket: null, lead: [], epoch: 0 };
      }
      this.counters.misses++;
      return MISS;
    }
    this.counters.misses++;
    return generation === undefined ? MISS : { ...MISS, ticket: { digest, generation } };
  }

  private nextToken(): string {
    return `${this.instance}:${++this.tokens}`;
  }

  async fill(ticket: FillTicket, customer: Customer, request: IdentifyRequest): Promise<void> {
    const digest = customerDigest(customer.primaryContactId);
    const ns = this.namespace;
    if (digest !== ticket.digest || this.pending.size > 0 || ns === null) {
      this.counters.staleFillsRefused++;
      return;
    }
    try {
      const keys = [
        this.key(ns, digest),
        this.generationKey(ns, digest),
        ...this.indexKeys(ns, request),
        ...this.keyPairs(ns, customer.secondaryContactIds),
      ];
      const [stored, repairs] = await this.scripted.identityFill(
        keys.length,
        ...keys,
        ticket.generation,
        JSON.stringify(customer),
        this.options.ttlSeconds,
        digest,
        this.generationTtl,
        versionOf(customer),
        this.nextToken(),
        TOMBSTONE,
      );
      this.counters.repairs += repairs;
      if (stored === 1) {
        this.counters.fills++;
      } else {
        this.counters.staleFillsRefused++;
      }
    } catch (error) {
      this.failed(error);
    }
  }

  async hint(request: IdentifyRequest, customer: Customer): Promise<void> {
    const ns = this.namespace;
    if (this.pending.size > 0 || ns === null) {
      return;
    }
    try {
      const digest = customerDigest(customer.primaryContactId);
      const keys = [
        ...this.indexKeys(ns, request),
        this.key(ns, digest),
        ...this.keyPairs(ns, customer.secondaryContactIds),
      ];
      this.counters.repairs += await this.scripted.identityHint(
        keys.length,
        ...keys,
        digest,
        this.options.ttlSeconds,
        JSON.stringify(customer),
        versionOf(customer),
        this.generationTtl,
        this.nextToken(),
        TOMBSTONE,
      );
    } catch (error) {
      this.failed(error);
    }
  }

  async publish(
    customer: Customer,
    demotedPrimaryIds: readonly number[],
    request: IdentifyRequest,
  ): Promise<void> {
    const primaryId = customer.primaryContactId;
    const version = versionOf(customer);
    const digest = customerDigest(primaryId);
    const ns = this.namespace;
    const keys =
      ns === null
        ? []
        : [
            this.key(ns, digest),
            this.generationKey(ns, digest),
            ...this.indexKeys(ns, request),
            ...this.keyPairs(ns, demotedPrimaryIds),
          ];
    // A publication is what keeps other instances from answering the old state: try twice
    // before answering without it (not at all while no Redis is known: owed at once).
    let failure: unknown = new Error("not connected to Redis");
    for (let attempt = 0; attempt < 2 && ns !== null; attempt++) {
      try {
        await this.scripted.identityPublish(
          keys.length,
          ...keys,
          JSON.stringify(customer),
          this.options.ttlSeconds,
          digest,
          this.generationTtl,
          version,
          this.nextToken(),
          TOMBSTONE,
        );
        this.counters.publications += 1 + demotedPrimaryIds.length;
        return;
      } catch (error) {
        failure = error;
      }
    }
    // Owed from now on: a floor at this version (so no older entry can stay or be stored) and the
    // tombstones. Until they are paid this instance does not read the cache at all.
    const floor: CacheDebt = { kind: "floor", version };
    const tombstones = demotedPrimaryIds.map((id) => [id, { kind: "tombstone" }] as const);
    this.owe(primaryId, floor);
    for (const [id, tombstone] of tombstones) {
      this.owe(id, tombstone);
    }
    this.failed(failure);
    this.scheduleRetry();
    // A floor at version 1 refuses nothing (no state of a customer is older than its first): the
    // ledger gets none, so a Redis outage does not cost every new customer a row there.
    await this.recordInLedger(version > 1 ? [[primaryId, floor], ...tombstones] : tombstones);
  }

  /**
   * Records a failed publication's debts in the ledger before the writer answers. If the database
   * refuses them, they are logged and kept aside, to be recorded again at the next poll.
   */
  private async recordInLedger(debts: readonly (readonly [number, CacheDebt])[]): Promise<void> {
    const { ledger } = this.options;
    if (ledger === undefined || debts.length === 0) {
      return;
    }
    try {
      await ledger.record(debts);
      this.counters.debtsRecorded += debts.length;
      this.ledgerFailing.record = false;
    } catch (error) {
      for (const [id, debt] of debts) {
        if (!outranks(this.unrecorded.get(id), debt)) {
          this.unrecorded.set(id, debt);
        }
      }
      this.ledgerFailed("record", error);
    }
  }

  /** Records again the debts the ledger refused, those this instance has not paid itself since. */
  private async recordAgain(): Promise<void> {
    const still = [...this.unrecorded].filter(([id]) => this.pending.has(id));
    this.unrecorded.clear();
    await this.recordInLedger(still);
  }

  /**
   * Pays the ledger's debts, whoever recorded them, while Redis is reachable: reads them oldest
   * first, settles them in Redis, then deletes their rows; page after page, up to a bound per
   * poll. Another instance may pay the same debts at the same time: settling twice is harmless.
   */
  private async payLedger(): Promise<void> {
    const { ledger } = this.options;
    if (ledger === undefined) {
      return;
    }
    try {
      for (let page = 0; page < LEDGER_PAGES_PER_POLL && !this.closing; page++) {
        const ns = this.namespace;
        if (ns === null) {
          return;
        }
        const owed = await ledger.owed(LEDGER_PAGE);
        this.ledgerFailing.payment = false;
        // Redis may have gone, or come back as another server (a new namespace), while the
        // database answered: paid into the namespace of before, the debts would be deleted unpaid.
        // Checked in the tick that sends them, as flushPending does.
        if (owed.length === 0 || this.namespace !== ns) {
          return;
        }
        try {
          await this.settle(
            ns,
            owed.map(({ primaryId, debt }) => [primaryId, debt] as const),
          );
        } catch (error) {
          this.failed(error);
          return;
        }
        this.counters.debtsPaid += owed.length;
        await ledger.paid(owed.map(({ id }) => id));
        if (owed.length < LEDGER_PAGE) {
          return;
        }
      }
    } catch (error) {
      this.ledgerFailed("payment", error);
    }
  }

  private ledgerFailed(what: "record" | "payment", error: unknown): void {
    if (this.ledgerFailing[what]) {
      return;
    }
    this.ledgerFailing[what] = true;
    const reason = error instanceof Error ? error.message : String(error);
    this.events.onWarning?.(
      what === "record"
        ? `cache debts could not be recorded in the database (${reason}): another instance may answer from an older cache entry until this one pays them to Redis or records them (tried again every poll)`
        : `cache debts could not be read or cleared in the database (${reason}): another instance may answer from an older cache entry until they are paid`,
    );
  }

  /**
   * Records a debt, keeping the stronger one already owed: a tombstone over a floor, the higher of
   * two floors. Two failed publications of one customer can finish out of order; a floor lowered
   * by the older one would let its older state back once paid.
   */
  private owe(primaryId: number, debt: CacheDebt): void {
    if (!outranks(this.pending.get(primaryId), debt)) {
      this.pending.set(primaryId, debt);
    }
  }

  stats(): CacheStats {
    return { ...this.counters };
  }

  available(): boolean {
    return this.reachable && this.pending.size === 0 && this.namespace !== null;
  }

  async close(): Promise<void> {
    if (this.retryTimer !== null) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
    this.closing = true;
    if (this.ledgerTimer !== null) {
      clearInterval(this.ledgerTimer);
      this.ledgerTimer = null;
    }
    await this.ledgerPayment;
    if (this.pending.size > 0) {
      await this.flushPending();
    }
    // What Redis did not take, the ledger may: for the other instances to pay.
    await this.recordAgain();
    this.redis.disconnect();
  }

  /** Customers whose drop or tombstone is still owed to Redis (for tests and readiness). */
  pendingInvalidations(): number {
    return this.pending.size;
  }

  /** Pays the owed publications: floors and tombstones, each with a new generation. */
  private async settle(ns: string, owed: readonly (readonly [number, CacheDebt])[]): Promise<void> {
    const pipeline = this.redis.multi() as unknown as {
      identitySettle(...args: (string | number)[]): unknown;
      exec(): Promise<[Error | null, unknown][] | null>;
    };
    for (const [id, debt] of owed) {
      const digest = customerDigest(id);
      pipeline.identitySettle(
        this.key(ns, digest),
        this.generationKey(ns, digest),
        debt.kind,
        debt.kind === "floor" ? debt.version : 0,
        this.options.ttlSeconds,
        this.generationTtl,
        this.nextToken(),
      );
    }
    const results = await pipeline.exec();
    const failure = results?.find(([error]) => error !== null)?.[0];
    if (results === null || failure) {
      throw failure ?? new Error("redis transaction aborted");
    }
  }

  private async flushPending(): Promise<void> {
    const ns = this.namespace;
    if (this.pending.size === 0 || ns === null) {
      return;
    }
    const owed = [...this.pending];
    try {
      await this.settle(ns, owed);
      for (const [id, debt] of owed) {
        if (this.pending.get(id) === debt) {
          this.pending.delete(id);
        }
      }
      this.counters.publications += owed.length;
      this.markAvailable();
    } catch (error) {
      this.failed(error);
      this.scheduleRetry();
    }
  }

  private scheduleRetry(): void {
    if (this.retryTimer !== null) {
      return;
    }
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.flushPending();
    }, 100);
    this.retryTimer.unref();
  }

  /** `operations`: how many the failure stands for (a turn's lookups are one script). */
  private failed(error: unknown, operations = 1): void {
    this.counters.errors += operations;
    this.markUnavailable(error instanceof Error ? error.message : String(error));
  }

  private markUnavailable(reason: string): void {
    if (this.reachable) {
      this.reachable = false;
      this.events.onUnavailable?.(reason);
    }
  }

  private markAvailable(): void {
    if (!this.reachable && this.pending.size === 0) {
      this.reachable = true;
      this.events.onAvailable?.();
    }
  }
}
