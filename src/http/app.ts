import { randomUUID } from "node:crypto";
import type { IncomingMessage } from "node:http";
import Fastify, { LogController } from "fastify";
import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import type { IdentifyService } from "../service/identify.service.js";
import { createErrorHandler, MASKED_MESSAGES } from "./errors.js";
import type { ErrorMessages } from "./errors.js";
import { identifyRoute } from "./identify.route.js";

export interface AppDeps {
  readonly identify: IdentifyService;
  readonly logger: FastifyBaseLogger;
  readonly errorMessages: ErrorMessages;
}

const BODY_LIMIT_BYTES = 16 * 1024;
const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;

/** Keeps a caller's X-Request-Id when it is safe to log and echo; otherwise makes a new one. */
function requestIdOf(request: IncomingMessage): string {
  const header = request.headers["x-request-id"];
  return typeof header === "string" && REQUEST_ID_PATTERN.test(header) ? header : randomUUID();
}

/** Builds the HTTP app around its dependencies; it does not listen (see server.ts). */
export function buildApp(deps: AppDeps): FastifyInstance {
  const app = Fastify({
    loggerInstance: deps.logger,
    logController: new LogController({
      disableRequestLogging: true,
      requestIdLogLabel: "requestId",
    }),
    genReqId: requestIdOf,
    requestIdHeader: false,
    bodyLimit: BODY_LIMIT_BYTES,
    onProtoPoisoning: "error",
    onConstructorPoisoning: "error",
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
  app.addHook("onRequest", async (request, reply) => {
    reply.header("x-request-id", request.id);
  });
  app.addHook("onResponse", async (request, reply) => {
    request.log.debug(
      {
        method: request.method,
        url: request.url,
        statusCode: reply.statusCode,
        responseTime: reply.elapsedTime,
      },
      "request completed",
    );
  });
  app.setErrorHandler(createErrorHandler(deps.errorMessages));
  app.setNotFoundHandler((request, reply) =>
    reply.status(404).send({ error: MASKED_MESSAGES.NOT_FOUND, requestId: request.id }),
  );

  void app.register(identifyRoute, { identify: deps.identify });
  return app;
}
