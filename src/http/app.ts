import { randomUUID } from "node:crypto";
import type { IncomingMessage } from "node:http";
import Fastify, { LogController } from "fastify";
import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import fastifySwagger from "@fastify/swagger";
import fastifySwaggerUi from "@fastify/swagger-ui";
import type { Metrics } from "../observability/metrics.js";
import type { IdentifyService } from "../service/identify.service.js";
import fastifyCors from "@fastify/cors";
import fastifyHelmet from "@fastify/helmet";
import fastifyRateLimit from "@fastify/rate-limit";
import type { Redis } from "ioredis";
import { createErrorHandler, MASKED_MESSAGES, RateLimitedError } from "./errors.js";
import { ApiKeys, guardRequest, screenBody, ThreatTracker } from "./security.js";
import type { ThreatPolicy } from "./security.js";
import type { ErrorMessages } from "./errors.js";
import { healthRoute } from "./health.route.js";
import { lazyChildLoggerFactory } from "./lazy-logger.js";
import { DEBUG_LEVELS } from "./log-levels.js";
import { syncedRedisStore } from "./rate-limit-store.js";
import type { Readiness } from "./health.route.js";
import { identifyRoute } from "./identify.route.js";
import { metricsRoute } from "./metrics.route.js";

/** Limits on clients and connections; every field has a safe default (see DEFAULT_SECURITY). */
export interface SecurityOptions {
  readonly keys: ApiKeys;
  readonly threats: ThreatPolicy;
  /** Requests per client per window; null: no rate limit. */
  readonly rateLimit: {
    readonly max: number;
    readonly windowMs: number;
    /** Shared counters for every instance; null: in-process. */
    readonly redis: Redis | null;
    /** Prefix of the Redis keys. */
    readonly prefix: string;
    /**
     * With Redis: how often each process adds its counts to Redis's (see rate-limit-store.ts);
     * 0: one Redis script per request, exact across processes.
     */
    readonly syncMs: number;
  } | null;
  readonly corsOrigins: readonly string[];
  readonly trustProxy: boolean | string;
  readonly requestTimeoutMs: number;
  readonly connectionTimeoutMs: number;
  readonly handlerTimeoutMs: number;
  readonly keepAliveTimeoutMs: number;
  readonly maxRequestsPerSocket: number;
}

export const DEFAULT_SECURITY: SecurityOptions = {
  keys: new ApiKeys([]),
  threats: { limit: 5, windowMs: 60_000, cooldownMs: 300_000 },
  rateLimit: null,
  corsOrigins: [],
  trustProxy: false,
  requestTimeoutMs: 10_000,
  connectionTimeoutMs: 120_000,
  handlerTimeoutMs: 15_000,
  keepAliveTimeoutMs: 72_000,
  maxRequestsPerSocket: 10_000,
};

export interface AppDeps {
  readonly security?: SecurityOptions;
  readonly identify: IdentifyService;
  readonly logger: FastifyBaseLogger;
  readonly errorMessages: ErrorMessages;
  readonly metrics: Metrics;
  readonly readiness: () => Promise<Readiness>;
  /** The /metrics text; by default this process's registry. */
  readonly scrapeMetrics?: () => Promise<{ contentType: string; body: string }>;
}

const BODY_LIMIT_BYTES = 16 * 1024;

/**
 * The security headers of a JSON API (OWASP REST Security Cheat Sheet): nothing of an answer is
 * cached, framed or sniffed. Helmet's full set (a CSP for pages, and eight more) is for the HTML
 * of /docs only: on every answer it cost a third of the throughput and 700 bytes.
 */
const API_HEADERS = {
  "cache-control": "no-store",
  "content-security-policy": "frame-ancestors 'none'",
  "strict-transport-security": "max-age=31536000; includeSubDomains",
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
} as const;
const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;

/** Keeps a caller's X-Request-Id when it is safe to log and echo; otherwise makes a new one. */
function requestIdOf(request: IncomingMessage): string {
  const header = request.headers["x-request-id"];
  return typeof header === "string" && REQUEST_ID_PATTERN.test(header) ? header : randomUUID();
}

/**
 * Where the rate limit counts: in process (no option), in Redis through a script per request
 * (the plugin's store), or locally with a sync to Redis (rate-limit-store.ts).
 */
function rateLimitBackend(limit: NonNullable<SecurityOptions["rateLimit"]>) {
  const { redis, prefix, syncMs } = limit;
  if (redis === null) {
    return {};
  }
  return syncMs > 0 ? { store: syncedRedisStore({ redis, prefix, syncMs }) } : { redis };
}

/** Builds the HTTP app around its dependencies; it does not listen (see server.ts). */
export function buildApp(deps: AppDeps): FastifyInstance {
  const security = deps.security ?? DEFAULT_SECURITY;
  const app = Fastify({
    trustProxy: security.trustProxy,
    requestTimeout: security.requestTimeoutMs,
    connectionTimeout: security.connectionTimeoutMs,
    keepAliveTimeout: security.keepAliveTimeoutMs,
    maxRequestsPerSocket: security.maxRequestsPerSocket,
    // Node checks the request timeout on this interval (30 s by default): check often enough
    // that a slow client is cut off close to REQUEST_TIMEOUT_MS.
    http: {
      headersTimeout: security.requestTimeoutMs,
      connectionsCheckingInterval: Math.min(1000, security.requestTimeoutMs),
    },
    loggerInstance: deps.logger,
    childLoggerFactory: lazyChildLoggerFactory,
    logController: new LogController({
      disableRequestLogging: true,
      requestIdLogLabel: "requestId",
    }),
    genReqId: requestIdOf,
    requestIdHeader: false,
    bodyLimit: BODY_LIMIT_BYTES,
    // Kept as own properties (JSON.parse never touches the prototype) so the threat screen sees
    // them and answers 403, as for any other attack signature.
    onProtoPoisoning: "ignore",
    onConstructorPoisoning: "ignore",
    ajv: {
      // Reject what does not fit instead of silently coercing or dropping it.
      customOptions: {
        removeAdditional: false,
        coerceTypes: false,
        useDefaults: false,
        allErrors: false,
      },
    },
  }) as unknown as FastifyInstance;

  // JSON only: a text body is a client error, not a string to validate.
  app.removeContentTypeParser("text/plain");
  // While shutting down, answers close their connection, so keep-alive clients move on and the
  // server can finish closing once the in-flight requests are answered.
  let closing = false;
  app.addHook("preClose", (done) => {
    closing = true;
    done();
  });
  app.addHook("onRequest", (request, reply, done) => {
    reply.headers(API_HEADERS);
    reply.header("x-request-id", request.id);
    done();
  });
  app.addHook("onSend", (_request, reply, payload, done) => {
    if (closing) {
      reply.header("connection", "close");
    }
    done(null, payload);
  });
  // A callback hook, not an async one: no promise per request.
  app.addHook("onResponse", (request, reply, done) => {
    deps.metrics.observeRequest(
      request.routeOptions.url ?? "unmatched",
      request.method,
      reply.statusCode,
      reply.elapsedTime / 1000,
    );
    if (DEBUG_LEVELS.has(request.log.level)) {
      request.log.debug(
        {
          method: request.method,
          url: request.url,
          statusCode: reply.statusCode,
          responseTime: reply.elapsedTime,
        },
        "request completed",
      );
    }
    done();
  });
  app.setErrorHandler(createErrorHandler(deps.errorMessages));
  app.setNotFoundHandler((request, reply) =>
    reply.status(404).send({ error: MASKED_MESSAGES.NOT_FOUND, requestId: request.id }),
  );

  void app.register(fastifySwagger, {
    openapi: {
      openapi: "3.1.0",
      info: {
        title: "Identity reconciliation service",
        version: "1",
        description:
          "POST /identify links the contacts that share an email or a phone number into one " +
          "customer. Error messages are masked on purpose: 400 and 413 say " +
          `"${MASKED_MESSAGES.INVALID_INPUT}", a database failure says ` +
          `"${MASKED_MESSAGES.DATABASE_FAILURE}"; the real cause is logged under the request id.`,
      },
      tags: [
        { name: "identify", description: "Identity reconciliation" },
        { name: "operations", description: "Health, readiness and metrics" },
      ],
    },
  });
  // Helmet's page headers (its CSP among them) apply to /docs only: the plugin is registered in
  // the same encapsulated context as the UI.
  void app.register(async (docs) => {
    await docs.register(fastifyHelmet, { global: true });
    await docs.register(fastifySwaggerUi, { routePrefix: "/docs", staticCSP: true });
  });
  if (security.corsOrigins.length > 0) {
    void app.register(fastifyCors, { origin: [...security.corsOrigins] });
  }
  void app.register(healthRoute, { readiness: deps.readiness });
  const registry = deps.metrics.registry;
  const threats = new ThreatTracker(security.threats);
  // The API proper: cool-down, keys, rate limit, then the attack screen, in this order.
  void app.register(async (api) => {
    api.addHook("onRequest", guardRequest({ keys: security.keys, threats }));
    if (security.rateLimit !== null) {
      await api.register(fastifyRateLimit, {
        max: security.rateLimit.max,
        timeWindow: security.rateLimit.windowMs,
        keyGenerator: (request) => request.client,
        ...rateLimitBackend(security.rateLimit),
        nameSpace: security.rateLimit.prefix,
        skipOnError: true,
        // The x-ratelimit-* headers go on 429 answers only (with Retry-After), not on every
        // answer: three headers per response for a limit a well-behaved client never meets.
        addHeadersOnExceeding: {
          "x-ratelimit-limit": false,
          "x-ratelimit-remaining": false,
          "x-ratelimit-reset": false,
        },
        errorResponseBuilder: (_request, context) =>
          new RateLimitedError(Math.ceil(context.ttl / 1000)),
      });
    }
    api.addHook("preValidation", screenBody(threats));
    await api.register(identifyRoute, {
      identify: deps.identify,
      metrics: deps.metrics,
      timeoutMs: security.handlerTimeoutMs,
    });
    await api.register(metricsRoute, {
      scrape:
        deps.scrapeMetrics ??
        (async () => ({ contentType: registry.contentType, body: await registry.metrics() })),
    });
  });
  app.get("/openapi.json", { schema: { hide: true } }, () => app.swagger());
  return app;
}
