import type { FastifyError, FastifyReply, FastifyRequest } from "fastify";
import { InvalidInputError } from "../domain/errors.js";
import { DatabaseError } from "../storage/errors.js";
import { ThreatError, UnauthorizedError } from "./security.js";

export type ErrorMessages = "masked" | "transparent";

/** Every way a request can fail, as the HTTP layer sees it. */
export type HttpErrorCode =
  | "INVALID_INPUT"
  | "UNAUTHORIZED"
  | "THREAT"
  | "PAYLOAD_TOO_LARGE"
  | "NOT_FOUND"
  | "RATE_LIMITED"
  | "DATABASE_FAILURE"
  | "UNAVAILABLE"
  | "INTERNAL";

/** Too many requests from one client; `retryAfterSeconds` is also in the Retry-After header. */
export class RateLimitedError extends Error {
  readonly code = "RATE_LIMITED";
  readonly statusCode = 429;
  constructor(readonly retryAfterSeconds: number) {
    super(`rate limit reached; retry after ${retryAfterSeconds}s`);
    this.name = "RateLimitedError";
  }
}

/** The decoy messages of the design: they tell an attacker nothing about the real cause. */
export const MASKED_MESSAGES: Record<HttpErrorCode, string> = {
  INVALID_INPUT: "Invalid CSRF token.",
  UNAUTHORIZED: "Unauthorized.",
  THREAT: "Invalid CSRF token.",
  PAYLOAD_TOO_LARGE: "Invalid CSRF token.",
  NOT_FOUND: "Not found.",
  RATE_LIMITED: "Too many requests.",
  DATABASE_FAILURE: "Request timestamp invalid.",
  UNAVAILABLE: "Service unavailable.",
  INTERNAL: "Internal server error.",
};

interface Classified {
  readonly code: HttpErrorCode;
  /** The real cause, for the log and for ERROR_MESSAGES=transparent. */
  readonly reason: string;
}

function classify(error: unknown): Classified {
  if (error instanceof InvalidInputError) {
    return { code: "INVALID_INPUT", reason: error.reason };
  }
  if (error instanceof DatabaseError) {
    return { code: "DATABASE_FAILURE", reason: error.message };
  }
  if (error instanceof UnauthorizedError) {
    return { code: "UNAUTHORIZED", reason: error.reason };
  }
  if (error instanceof ThreatError) {
    return { code: "THREAT", reason: error.reason };
  }
  if (error instanceof RateLimitedError) {
    return { code: "RATE_LIMITED", reason: error.message };
  }
  const fastifyError = error as Partial<FastifyError>;
  if (fastifyError.validation !== undefined) {
    return { code: "INVALID_INPUT", reason: fastifyError.message ?? "body is invalid" };
  }
  if (fastifyError.code === "HANDLER_TIMEOUT" || fastifyError.code === "FST_ERR_HANDLER_TIMEOUT") {
    return { code: "UNAVAILABLE", reason: "the handler timed out" };
  }
  if (fastifyError.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
    return { code: "PAYLOAD_TOO_LARGE", reason: "body is larger than the limit" };
  }
  const status = fastifyError.statusCode;
  if (typeof status === "number" && status >= 400 && status < 500) {
    // Fastify's own client errors: malformed JSON, a non-JSON content type, an empty body, ...
    return {
      code: "INVALID_INPUT",
      reason: `${fastifyError.code ?? "bad request"}: ${fastifyError.message ?? ""}`,
    };
  }
  return {
    code: "INTERNAL",
    reason: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
  };
}

function statusOf(code: HttpErrorCode): number {
  switch (code) {
    case "INVALID_INPUT":
      return 400;
    case "UNAUTHORIZED":
      return 401;
    case "THREAT":
      return 403;
    case "RATE_LIMITED":
      return 429;
    case "UNAVAILABLE":
      return 503;
    case "NOT_FOUND":
      return 404;
    case "PAYLOAD_TOO_LARGE":
      return 413;
    case "DATABASE_FAILURE":
    case "INTERNAL":
      return 500;
  }
}

/**
 * The app's one error handler: maps the error to a status, logs the real cause once under the
 * request id, and answers `{error, requestId}` with a masked message (or the real reason when
 * ERROR_MESSAGES=transparent). Never a stack, SQL or driver text in a masked answer.
 */
export function createErrorHandler(messages: ErrorMessages) {
  return function handleError(error: unknown, request: FastifyRequest, reply: FastifyReply) {
    const { code, reason } = classify(error);
    const status = statusOf(code);
    if (status >= 500 && code !== "UNAVAILABLE") {
      request.log.error({ code, reason, err: error }, "request failed");
    } else {
      request.log.info({ code, reason }, "request rejected");
    }
    if (code === "UNAUTHORIZED") {
      void reply.header("www-authenticate", "Bearer");
    }
    return reply.status(status).send({
      error: messages === "transparent" ? reason : MASKED_MESSAGES[code],
      requestId: request.id,
    });
  };
}
