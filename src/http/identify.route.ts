import type { FastifyInstance } from "fastify";
import { parseIdentifyRequest } from "../domain/identify-input.js";
import type { Metrics } from "../observability/metrics.js";
import type { IdentifyService } from "../service/identify.service.js";
import { Deadlines } from "./deadlines.js";
import { MASKED_MESSAGES } from "./errors.js";
import { DEBUG_LEVELS } from "./log-levels.js";
import { customerSchema, errorSchema, identifyBodySchema } from "./schemas.js";

export interface IdentifyRouteOptions {
  readonly identify: IdentifyService;
  readonly metrics: Metrics;
  /** Answer 503 when the service has not answered in this time (the work may still finish). */
  readonly timeoutMs: number;
}

const REQUEST_ID = "0b7c4a52-3f7e-4b8e-9a39-4c1d2d6f9e10";

function errorResponse(description: string, message: string) {
  return { description, ...errorSchema, examples: [{ error: message, requestId: REQUEST_ID }] };
}

/** POST /identify: reconciles one checkout's contact details into its customer. */
export function identifyRoute(
  app: FastifyInstance,
  options: IdentifyRouteOptions,
  done: (error?: Error) => void,
): void {
  const deadlines = new Deadlines(options.timeoutMs);
  app.post(
    "/identify",
    {
      schema: {
        summary: "Reconcile a checkout's email and/or phone number into one customer.",
        description:
          "Links the contact rows that share the email or the phone number into one customer and " +
          "answers with it. A request with new information adds a secondary contact; a request " +
          "that bridges two customers merges them under the older primary. Every response " +
          "carries X-Request-Id; error messages are masked on purpose (the real cause is logged " +
          "under the request id).",
        tags: ["identify"],
        body: {
          ...identifyBodySchema,
          examples: [
            { email: "mcfly@hillvalley.edu", phoneNumber: "123456" },
            { email: null, phoneNumber: 123456 },
          ],
        },
        response: {
          200: {
            description: "The consolidated customer.",
            ...customerSchema,
            examples: [
              {
                primaryContactId: 1,
                emails: ["lorraine@hillvalley.edu", "mcfly@hillvalley.edu"],
                phoneNumbers: ["123456"],
                secondaryContactIds: [23],
              },
            ],
          },
          400: errorResponse(
            "Invalid input (any rule, malformed JSON, a non-JSON content type, an array, a nested " +
              "object, an unknown field). The message is a decoy.",
            MASKED_MESSAGES.INVALID_INPUT,
          ),
          413: errorResponse("The body is larger than 16 KiB.", MASKED_MESSAGES.PAYLOAD_TOO_LARGE),
          500: errorResponse(
            `A database failure ("${MASKED_MESSAGES.DATABASE_FAILURE}") or another unexpected ` +
              `error ("${MASKED_MESSAGES.INTERNAL}").`,
            MASKED_MESSAGES.DATABASE_FAILURE,
          ),
        },
      },
    },
    async (request, reply) => {
      const input = parseIdentifyRequest(request.body);
      const result = await deadlines.within(options.identify.identify(input));
      const { outcome, cached, json } = result;
      options.metrics.identified(outcome, cached ? "cache" : "database");
      if (DEBUG_LEVELS.has(request.log.level)) {
        request.log.debug(
          { outcome, cached, primaryContactId: result.customer.primaryContactId },
          "identified",
        );
      }
      if (json !== null) {
        // Kept ready by the database in the shape of the 200 schema: sent as it is.
        return reply.type("application/json; charset=utf-8").send(json);
      }
      return result.customer;
    },
  );
  done();
}
