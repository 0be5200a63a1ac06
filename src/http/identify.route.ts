import type { FastifyInstance } from "fastify";
import { parseIdentifyRequest } from "../domain/identify-input.js";
import type { IdentifyService } from "../service/identify.service.js";
import { customerSchema, errorSchema, identifyBodySchema } from "./schemas.js";

export interface IdentifyRouteOptions {
  readonly identify: IdentifyService;
}

/** POST /identify: reconciles one checkout's contact details into its customer. */
export function identifyRoute(
  app: FastifyInstance,
  options: IdentifyRouteOptions,
  done: (error?: Error) => void,
): void {
  app.post(
    "/identify",
    {
      schema: {
        body: identifyBodySchema,
        response: { 200: customerSchema, "4xx": errorSchema, "5xx": errorSchema },
      },
    },
    async (request) => {
      const input = parseIdentifyRequest(request.body);
      const { customer, outcome } = await options.identify.identify(input);
      request.log.debug({ outcome, primaryContactId: customer.primaryContactId }, "identified");
      return customer;
    },
  );
  done();
}
