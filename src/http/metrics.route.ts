import type { FastifyInstance } from "fastify";

export interface MetricsRouteOptions {
  /** The exposition text and its content type (this process, or every worker aggregated). */
  readonly scrape: () => Promise<{ contentType: string; body: string }>;
}

/** GET /metrics in the Prometheus text format. */
export function metricsRoute(
  app: FastifyInstance,
  options: MetricsRouteOptions,
  done: (error?: Error) => void,
): void {
  app.get(
    "/metrics",
    {
      schema: {
        summary: "Prometheus metrics (text exposition format).",
        tags: ["operations"],
        response: {
          200: {
            description: "Metrics of every server process.",
            content: { "text/plain": { schema: { type: "string" } } },
          },
        },
      },
    },
    async (_request, reply) => {
      const { contentType, body } = await options.scrape();
      return reply.type(contentType).send(body);
    },
  );
  done();
}
