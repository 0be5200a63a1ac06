import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";

export interface SyncedCountsOptions {
  readonly redis: Redis;
  /** Prefix of the Redis keys (the same keys as @fastify/rate-limit's own Redis store). */
  readonly prefix: string;
  /** How often this process adds its counts to Redis's, and reads back the total. */
  readonly syncMs: number;
}

/** The answer @fastify/rate-limit expects of a store. */
interface Count {
  readonly current: number;
  readonly ttl: number;
}

type Callback = (error: Error | null, count?: Count) => void;

interface Counter {
  /** Requests counted here and not yet in a batch. */
  pending: number;
  /** Requests of the batch being added to Redis, or to be sent again: it may have been applied. */
  sending: number;
  /** The batch's number: Redis applies a batch of this process to this key once. */
  batch: number;
  /** A send of this counter's batch is out. */
  inFlight: boolean;
  /** The window's count in Redis (every process), as last read, this process's sent ones included. */
  shared: number;
  /** When the window ends, in ms since the epoch. */
  resetAt: number;
  readonly windowMs: number;
}

/**
 * Adds a process's batch to the window's count, starting the window if there is none; returns
 * the count and the window's time left. KEYS: the window's key, its batches key. ARGV: the batch's
 * count, the window in ms, the process's id, the batch's number. A batch is applied once: a send
 * that timed out after Redis ran it is sent again with the same number, and only read back.
 */
const SYNC = `
local applied = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
local count
if tonumber(ARGV[4]) > applied then
  count = redis.call('INCRBY', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
else
  count = tonumber(redis.call('GET', KEYS[1]) or '0')
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
redis.call('PEXPIRE', KEYS[2], ttl)
return {count, ttl}`;

/** Clients counted at most at once; past it the oldest counter is dropped (its count restarts). */
const MAX_COUNTERS = 100_000;

/** How often syncs are tried while Redis fails. */
const RETRY_MS = 1000;

/** How often counters of past windows are dropped. */
const SWEEP_MS = 10_000;

type SyncCommand = (
  key: string,
  batchesKey: string,
  count: number,
  windowMs: number,
  processId: string,
  batch: number,
) => Promise<[number, number]>;

/**
 * A @fastify/rate-limit store whose counts are shared through Redis without a Redis round trip
 * per request (the plugin's own Redis store runs a script per request, before the request goes
 * on). Each process counts locally and, every `syncMs`, adds its new counts to the window's key
 * in Redis and reads back the total of every process. A request is over the limit when that
 * total, plus this process's counts not yet added, passes it.
 *
 * What it costs: between two syncs a process does not see the others' new requests, so N
 * processes together can admit up to N × (one sync interval of traffic) past the limit. While
 * Redis cannot be reached, each process goes on counting alone, as with the in-process store.
 */
export function syncedRedisStore(options: SyncedCountsOptions) {
  const sync = defineSync(options.redis);
  const processId = randomUUID();
  // Batch numbers rise across every counter of the process: a counter made again (a new window,
  // or one dropped for room) never reuses a number that Redis has applied.
  let batches = 0;
  return class SyncedRedisStore {
    private readonly counters = new Map<string, Counter>();
    /** Keys counted since their last send. */
    private readonly dirty = new Set<string>();
    private timer: NodeJS.Timeout | null = null;
    /** While Redis fails: no sync before this time (ms since the epoch). */
    private retryAt = 0;
    private nextSweep = 0;
    private readonly prefix: string;

    constructor(_params?: unknown, prefix = options.prefix) {
      this.prefix = prefix;
    }

    incr(key: string, callback: Callback, timeWindow: number): void {
      const now = Date.now();
      let counter = this.counters.get(key);
      if (counter === undefined || now >= counter.resetAt) {
        if (counter === undefined && this.counters.size >= MAX_COUNTERS) {
          // Bounded memory whatever the number of clients: the oldest counter goes first.
          const oldest = this.counters.keys().next().value;
          if (oldest !== undefined) {
            this.counters.delete(oldest);
          }
        }
        counter = {
          pending: 0,
          sending: 0,
          batch: 0,
          inFlight: false,
          shared: 0,
          resetAt: now + timeWindow,
          windowMs: timeWindow,
        };
        this.counters.set(key, counter);
      }
      counter.pending++;
      this.dirty.add(key);
      this.schedule(options.syncMs);
      callback(null, {
        current: counter.shared + counter.sending + counter.pending,
        ttl: counter.resetAt - now,
      });
    }

    /** A store for one route's own limit (the plugin passes the route as `routeInfo`). */
    child(routeOptions: object): SyncedRedisStore {
      const route = (routeOptions as { routeInfo?: { method?: string; url?: string } }).routeInfo;
      return new SyncedRedisStore(
        undefined,
        `${this.prefix}${route?.method ?? ""}${route?.url ?? ""}-`,
      );
    }

    private async sync(): Promise<void> {
      this.timer = null;
      const now = Date.now();
      if (now < this.retryAt) {
        // Requests asked for a sync sooner; Redis failed: no more than once a second.
        this.schedule(this.retryAt - now);
        return;
      }
      if (now >= this.nextSweep) {
        // Clients not seen for a window are forgotten, so that the map holds only recent ones.
        this.nextSweep = now + SWEEP_MS;
        for (const [key, counter] of this.counters) {
          if (
            now >= counter.resetAt &&
            counter.pending === 0 &&
            counter.sending === 0 &&
            !counter.inFlight
          ) {
            this.counters.delete(key);
          }
        }
      }
      const sends: Promise<boolean>[] = [];
      for (const key of this.dirty) {
        const counter = this.counters.get(key);
        if (counter === undefined) {
          this.dirty.delete(key);
          continue;
        }
        // One send at a time per counter: the others' counts come back with it.
        if (counter.inFlight) {
          continue;
        }
        this.dirty.delete(key);
        if (counter.sending === 0) {
          // A new batch; a batch that failed goes again as it was (it may have been applied).
          counter.sending = counter.pending;
          counter.pending = 0;
          counter.batch = ++batches;
        }
        sends.push(this.send(key, counter));
      }
      const failed = (await Promise.all(sends)).some((sent) => !sent);
      if (failed) {
        this.retryAt = Date.now() + Math.max(options.syncMs, RETRY_MS);
      }
      // Counted while the sends were out, or sends to retry: the next sync is due.
      if (this.dirty.size > 0) {
        this.schedule(Math.max(options.syncMs, this.retryAt - Date.now()));
      }
    }

    /** Runs a sync after `delay` ms, unless one is already due. */
    private schedule(delay: number): void {
      this.timer ??= setTimeout(() => void this.sync(), delay).unref();
    }

    /** Adds the counter's batch to Redis's count; false if Redis did not answer. */
    private async send(key: string, counter: Counter): Promise<boolean> {
      counter.inFlight = true;
      try {
        const [count, ttl] = await sync(
          this.prefix + key,
          `${this.prefix}${key}:batches`,
          counter.sending,
          counter.windowMs,
          processId,
          counter.batch,
        );
        counter.shared = count;
        // The window is the one in Redis: another process may have started it.
        counter.resetAt = Date.now() + ttl;
        counter.sending = 0;
        if (counter.pending > 0) {
          // Counted while a batch was being sent again: the next batch.
          this.dirty.add(key);
        }
        return true;
      } catch {
        // The same batch goes again with a later sync, so that Redis gets it once it answers, and
        // once only if this try ran there after all. Meanwhile it counts here.
        this.dirty.add(key);
        return false;
      } finally {
        counter.inFlight = false;
      }
    }
  };
}

function defineSync(redis: Redis): SyncCommand {
  const name = "identityRateLimitSyncOnce";
  const commands = redis as unknown as Record<string, SyncCommand | undefined>;
  if (commands[name] === undefined) {
    redis.defineCommand(name, { numberOfKeys: 2, lua: SYNC });
  }
  const command = commands[name];
  if (command === undefined) {
    throw new Error("ioredis did not define the rate-limit sync command");
  }
  return command.bind(redis);
}
