import { EMAIL_MAX_LENGTH, PHONE_INPUT_MAX_LENGTH } from "../domain/identify-input.js";

/** The shape of an identify body; the domain normalizes and validates the values. */
export const identifyBodySchema = {
  type: "object",
  additionalProperties: false,
  properties: {
    // Whitespace around an address is trimmed, so allow a little more than the address limit.
    email: { type: ["string", "null"], maxLength: EMAIL_MAX_LENGTH + 64 },
    phoneNumber: {
      anyOf: [
        { type: "string", maxLength: PHONE_INPUT_MAX_LENGTH },
        { type: "integer", minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
        { type: "null" },
      ],
    },
  },
} as const;

export const customerSchema = {
  type: "object",
  required: ["primaryContactId", "emails", "phoneNumbers", "secondaryContactIds"],
  additionalProperties: false,
  properties: {
    primaryContactId: { type: "integer" },
    emails: { type: "array", items: { type: "string" } },
    phoneNumbers: { type: "array", items: { type: "string" } },
    secondaryContactIds: { type: "array", items: { type: "integer" } },
  },
} as const;

export const errorSchema = {
  type: "object",
  required: ["error", "requestId"],
  additionalProperties: false,
  properties: {
    error: { type: "string" },
    requestId: { type: "string" },
  },
} as const;
