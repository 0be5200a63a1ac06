import type { IdentifyRequest } from "./contact.js";
import { InvalidInputError } from "./errors.js";

export const EMAIL_MAX_LENGTH = 254;
const EMAIL_LOCAL_MAX_LENGTH = 64;
export const PHONE_INPUT_MAX_LENGTH = 32;

// ASCII only: a local part of the usual atext characters and dots (no leading, trailing or double
// dot), then a domain of two or more DNS labels.
const EMAIL_PATTERN =
  /^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const PHONE_PUNCTUATION = /[\s\-.()]/g;
const PHONE_PATTERN = /^\+?[0-9]{4,15}$/;

/**
 * Normalizes an email: trimmed and lowercased. An empty or whitespace-only string, null and
 * undefined are absent (null). Throws InvalidInputError for anything else that is not a plausible
 * address of at most 254 characters.
 */
export function normalizeEmail(value: unknown): string | null {
  if (value === undefined || value === null) {
    return null;
  }
  if (typeof value !== "string") {
    throw new InvalidInputError(`email must be a string or null, got ${typeof value}`);
  }
  const trimmed = value.trim();
  if (trimmed === "") {
    return null;
  }
  // Checked before lowercasing: toLowerCase maps some non-ASCII letters (the Kelvin sign) to ASCII.
  if (!/^[\x21-\x7e]+$/.test(trimmed)) {
    throw new InvalidInputError("email must be printable ASCII");
  }
  const email = trimmed.toLowerCase();
  if (email.length > EMAIL_MAX_LENGTH) {
    throw new InvalidInputError(`email is longer than ${EMAIL_MAX_LENGTH} characters`);
  }
  const at = email.indexOf("@");
  if (at > EMAIL_LOCAL_MAX_LENGTH || !EMAIL_PATTERN.test(email)) {
    throw new InvalidInputError("email is not a plausible address");
  }
  return email;
}

/**
 * Normalizes a phone number given as a string or a non-negative integer: spaces, dashes, dots and
 * parentheses are removed; what remains must be an optional leading + and 4 to 15 digits. Empty
 * or whitespace-only strings, null and undefined are absent (null).
 */
export function normalizePhoneNumber(value: unknown): string | null {
  if (value === undefined || value === null) {
    return null;
  }
  let raw: string;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new InvalidInputError("phoneNumber must be a non-negative integer when a number");
    }
    raw = String(value);
  } else if (typeof value === "string") {
    if (value.trim() === "") {
      return null;
    }
    if (value.length > PHONE_INPUT_MAX_LENGTH) {
      throw new InvalidInputError(
        `phoneNumber is longer than ${PHONE_INPUT_MAX_LENGTH} characters`,
      );
    }
    raw = value;
  } else {
    throw new InvalidInputError(
      `phoneNumber must be a string, integer or null, got ${typeof value}`,
    );
  }
  const phone = raw.replace(PHONE_PUNCTUATION, "");
  if (!PHONE_PATTERN.test(phone)) {
    throw new InvalidInputError("phoneNumber must be an optional + and 4 to 15 digits");
  }
  return phone;
}

/**
 * Turns a parsed JSON body into a normalized request. The body must be a plain object with no
 * keys other than email and phoneNumber, and at least one of them present after normalization.
 */
export function parseIdentifyRequest(body: unknown): IdentifyRequest {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new InvalidInputError("body must be a JSON object");
  }
  for (const key of Object.keys(body)) {
    if (key !== "email" && key !== "phoneNumber") {
      // The key is not logged: a client could put an email or a phone there.
      throw new InvalidInputError("unknown field");
    }
  }
  const fields = body as { email?: unknown; phoneNumber?: unknown };
  const email = normalizeEmail(fields.email);
  const phoneNumber = normalizePhoneNumber(fields.phoneNumber);
  if (email === null && phoneNumber === null) {
    throw new InvalidInputError("at least one of email and phoneNumber is required");
  }
  return { email, phoneNumber };
}
