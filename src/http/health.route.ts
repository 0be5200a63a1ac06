import type { FastifyInstance } from "fastify";

/** What /readyz reports: the database must be usable; the cache is reported, not required. */
export interface Readiness {
  readonly ready: boolean;
  readonly database: "ok" | "unreachable" | "migrations pending";
  readonly cache: { readonly kind: "redis" | "memory" | "off"; readonly available: boolean };
}

export interface HealthRouteOptions {
  readonly readiness: () => Promise<Readiness>;
}

const readinessSchema = {
  type: "object",
  required: ["status", "database", "cache"],
  properties: {
    status: { type: "string", enum: ["ready", "unavailable"] },
    database: { type: "string", enum: ["ok", "unreachable", "migrations pending"] },
    cache: {
      type: "object",
      required: ["kind", "available"],
      properties: {
        kind: { type: "string", enum: ["redis", "memory", "off"] },
        available: { type: "boolean" },
      },
    },
  },
} as const;

/** GET /healthz (the process answers) and GET /readyz (it can serve: database reachable, migrated). */
export function healthRoute(
  app: FastifyInstance,
  options: HealthRouteOptions,
  done: (error?: Error) => void,
): void {
  app.get(
    "/healthz",
    {
      schema: {
        summary: "Liveness: the process answers.",
        tags: ["operations"],
        response: {
          200: {
            description: "The process is alive.",
            type: "object",
            required: ["status"],
            properties: { status: { type: "string", enum: ["ok"] } },
            examples: [{ status: "ok" }],
          },
        },
      },
    },
    () => ({ status: "ok" }),
  );
  app.get(
    "/readyz",
    {
      schema: {
        summary: "Readiness: the database is reachable and migrated; the cache state is reported.",
        tags: ["operations"],
        response: {
          200: {
            description: "Ready to serve.",
            ...readinessSchema,
            examples: [
              { status: "ready", database: "ok", cache: { kind: "redis", available: true } },
            ],
          },
          503: {
            description: "Not ready: the database is unreachable or not migrated.",
            ...readinessSchema,
            examples: [
              {
                status: "unavailable",
                database: "unreachable",
                cache: { kind: "redis", available: false },
              },
            ],
          },
        },
      },
    },
    async (_request, reply) => {
      const readiness = await options.readiness();
      return reply.status(readiness.ready ? 200 : 503).send({
        status: readiness.ready ? "ready" : "unavailable",
        database: readiness.database,
        cache: readiness.cache,
      });
    },
  );
  done();
}
