import { hash, timingSafeEqual } from "node:crypto";
import type { FastifyReply, FastifyRequest } from "fastify";
import { LRUCache } from "lru-cache";
import { findThreat } from "../domain/threats.js";
import type { ThreatSignature } from "../domain/threats.js";

export interface ThreatPolicy {
  /** 403s within `windowMs` that put a client in cool-down. */
  readonly limit: number;
  readonly windowMs: number;
  readonly cooldownMs: number;
}

/** No or a wrong `Authorization: Bearer` key while keys are configured. */
export class UnauthorizedError extends Error {
  readonly code = "UNAUTHORIZED";
  constructor(readonly reason: string) {
    super(reason);
    this.name = "UnauthorizedError";
  }
}

/** A request carrying an attack signature, or from a client in cool-down. */
export class ThreatError extends Error {
  readonly code = "THREAT";
  constructor(readonly reason: string) {
    super(reason);
    this.name = "ThreatError";
  }
}

/** Hex SHA-256 of an API key: what API_KEYS_FILE holds, and what is compared. */
export function hashApiKey(key: string): string {
  return hash("sha256", key, "hex");
}

/**
 * Checks bearer keys against the configured SHA-256 digests in constant time: the presented key
 * is hashed, then compared with every digest (no early exit), so timing says nothing about how
 * much of a key was right.
 */
export class ApiKeys {
  private readonly digests: Buffer[];

  constructor(hexDigests: readonly string[]) {
    this.digests = hexDigests.map((hex) => Buffer.from(hex, "hex"));
  }

  get enabled(): boolean {
    return this.digests.length > 0;
  }

  /** The client id of a valid key (a digest prefix, safe to log), or null. */
  verify(authorization: string | undefined): string | null {
    const match = /^Bearer\s+(\S+)$/i.exec(authorization ?? "");
    const presented = hash("sha256", match?.[1] ?? "", "buffer");
    let found = false;
    for (const digest of this.digests) {
      found = timingSafeEqual(digest, presented) || found;
    }
    return found && match !== null ? `key:${presented.toString("hex").slice(0, 12)}` : null;
  }
}

/**
 * Counts each client's 403s; a client with `limit` of them within `windowMs` is refused for
 * `cooldownMs`, before any other work. In-process (bounded): each instance counts its own.
 */
export class ThreatTracker {
  private readonly clients = new LRUCache<string, { hits: number[]; blockedUntil: number }>({
    max: 100_000,
  });

  constructor(
    private readonly policy: ThreatPolicy,
    private readonly clock: () => number = Date.now,
  ) {}

  blocked(client: string): boolean {
    const state = this.clients.get(client);
    return state !== undefined && state.blockedUntil > this.clock();
  }

  record(client: string): void {
    const now = this.clock();
    const state = this.clients.get(client) ?? { hits: [], blockedUntil: 0 };
    state.hits = [...state.hits.filter((t) => t > now - this.policy.windowMs), now];
    if (state.hits.length >= this.policy.limit) {
      state.blockedUntil = now + this.policy.cooldownMs;
      state.hits = [];
    }
    this.clients.set(client, state);
  }
}

declare module "fastify" {
  interface FastifyRequest {
    /** Who is asking: `key:<digest prefix>` with a valid API key, else `ip:<address>`. */
    client: string;
  }
}

export interface GuardOptions {
  readonly keys: ApiKeys;
  readonly threats: ThreatTracker;
}

/**
 * onRequest for protected routes: a client in cool-down is refused (403) before anything else;
 * then, with keys configured, a missing or wrong key gets 401.
 */
export function guardRequest(options: GuardOptions) {
  return (request: FastifyRequest, _reply: FastifyReply, done: (error?: Error) => void) => {
    const keyClient = options.keys.enabled
      ? options.keys.verify(request.headers.authorization)
      : null;
    request.client = keyClient ?? `ip:${request.ip}`;
    if (options.threats.blocked(request.client)) {
      done(new ThreatError(`client ${request.client} is cooling down after repeated threats`));
      return;
    }
    if (options.keys.enabled && keyClient === null) {
      done(new UnauthorizedError("missing or unknown API key"));
      return;
    }
    done();
  };
}

/** preValidation for bodies: an attack signature earns a 403 and counts toward cool-down. */
export function screenBody(threats: ThreatTracker) {
  return (request: FastifyRequest, _reply: FastifyReply, done: (error?: Error) => void) => {
    const signature: ThreatSignature | null = findThreat(request.body);
    if (signature !== null) {
      threats.record(request.client);
      done(new ThreatError(`attack signature ${signature}`));
      return;
    }
    done();
  };
}
