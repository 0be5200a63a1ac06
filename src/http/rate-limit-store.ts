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
  /** Requests counted here and not yet sent to Redis. */
  pending: number;
  /** Requests being added to Redis now. */
  sending: number;
  /** The window's count in Redis (every process), as last read, this process's sent ones included. */
  shared: number;
  /** When the window ends, in ms since the epoch. */
  resetAt: number;
  readonly windowMs: number;
}

/** Adds a process's count to the window's, starting the window if there is none; returns both. */
const SYNC = `
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {count, ttl}`;

/** Clients counted at most at once; past it the oldest counter is dropped (its count restarts). */
const MAX_COUNTERS = 100_000;

/** How often syncs are tried while Redis fails. */
const RETRY_MS = 1000;

/** How often counters of past windows are dropped. */
const SWEEP_MS = 10_000;

type SyncCommand = (key: string, count: number, windowMs: number) => Promise<[number, number]>;

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
  return class SyncedRedisStore {
    private readonly counters = new Map<string, Counter>();
    /** Keys counted since their last send. */
    private readonly dirty = new Set<string>();
    private timer: NodeJS.Timeout | null = null;
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
      if (now >= this.nextSweep) {
        // Clients not seen for a window are forgotten, so that the map holds only recent ones.
        this.nextSweep = now + SWEEP_MS;
        for (const [key, counter] of this.counters) {
          if (now >= counter.resetAt && counter.pending === 0 && counter.sending === 0) {
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
        if (counter.sending > 0) {
          continue;
        }
        this.dirty.delete(key);
        counter.sending = counter.pending;
        counter.pending = 0;
        sends.push(this.send(key, counter));
      }
      const failed = (await Promise.all(sends)).some((sent) => !sent);
      // Counted while the sends were out, or sends to retry: the next sync is due; while Redis
      // fails, no more than once a second.
      if (this.dirty.size > 0) {
        this.schedule(failed ? Math.max(options.syncMs, RETRY_MS) : options.syncMs);
      }
    }

    /** Runs a sync after `delay` ms, unless one is already due. */
    private schedule(delay: number): void {
      this.timer ??= setTimeout(() => void this.sync(), delay).unref();
    }

    /** Adds the counter's count to Redis's; false if Redis did not answer. */
    private async send(key: string, counter: Counter): Promise<boolean> {
      try {
        const [count, ttl] = await sync(this.prefix + key, counter.sending, counter.windowMs);
        counter.shared = count;
        // The window is the one in Redis: another process may have started it.
        counter.resetAt = Date.now() + ttl;
        counter.sending = 0;
        return true;
      } catch {
        // Sent again with the next sync, so that Redis gets them once it answers (a script that
        // timed out after running counts them twice: the strict side). Meanwhile they count here.
        counter.pending += counter.sending;
        counter.sending = 0;
        this.dirty.add(key);
        return false;
      }
    }
  };
}

function defineSync(redis: Redis): SyncCommand {
  const name = "identityRateLimitSync";
  const commands = redis as unknown as Record<string, SyncCommand | undefined>;
  if (commands[name] === undefined) {
    redis.defineCommand(name, { numberOfKeys: 1, lua: SYNC });
  }
  const command = commands[name];
  if (command === undefined) {
    throw new Error("ioredis did not define the rate-limit sync command");
  }
  return command.bind(redis);
}
