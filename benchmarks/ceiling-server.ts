import Fastify from "fastify";
import { identifyBodySchema } from "../src/http/schemas.js";

/**
 * The framework's ceiling: a bare Fastify route that validates the same body as POST /identify
 * and answers a constant. What /identify is measured against.
 */
const app = Fastify({
  logger: false,
  bodyLimit: 16 * 1024,
  ajv: { customOptions: { removeAdditional: false, coerceTypes: false } },
});
const constant = {
  primaryContactId: 1,
  emails: ["lorraine@hillvalley.edu"],
  phoneNumbers: ["123456"],
  secondaryContactIds: [] as number[],
};
app.post("/identify", { schema: { body: identifyBodySchema } }, () => constant);
const address = await app.listen({ host: "127.0.0.1", port: Number(process.env.PORT ?? 0) });
process.stdout.write(`${JSON.stringify({ msg: `Server listening at ${address}` })}\n`);
process.once("SIGTERM", () => {
  void app.close().then(() => process.exit(0));
});
