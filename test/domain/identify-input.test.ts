import { describe, it } from "node:test";
import assert from "node:assert/strict";

import type { IdentifyRequest } from "../../src/domain/contact.js";
import { InvalidInputError } from "../../src/domain/errors.js";
import {
  normalizeEmail,
  normalizePhoneNumber,
  parseIdentifyRequest,
} from "../../src/domain/identify-input.js";

function isInvalidInput(error: unknown): boolean {
  return error instanceof InvalidInputError;
}

/** JSON for a test name; undefined has no JSON form. */
function show(value: unknown): string {
  return value === undefined ? "undefined" : JSON.stringify(value);
}

// Boundaries: a local part of 64 characters and a domain of 189 make a 254-character address,
// the longest accepted; one more character in either place is rejected.
const LOCAL_64 = "l".repeat(64);
const DOMAIN_189 = `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(61)}`;
const EMAIL_254 = `${LOCAL_64}@${DOMAIN_189}`;
const EMAIL_255 = `${LOCAL_64}@${DOMAIN_189}c`;
const LOCAL_65_EMAIL = `${"l".repeat(65)}@example.com`;

describe("normalizeEmail", () => {
  const accepted: readonly { input: unknown; expected: string | null }[] = [
    { input: "lorraine@hillvalley.edu", expected: "lorraine@hillvalley.edu" },
    { input: "  Lorraine@HillValley.EDU\t", expected: "lorraine@hillvalley.edu" },
    { input: "o'brien@example.com", expected: "o'brien@example.com" },
    { input: "first+tag@example.com", expected: "first+tag@example.com" },
    { input: "first.last@mail.example.co.uk", expected: "first.last@mail.example.co.uk" },
    { input: EMAIL_254, expected: EMAIL_254 },
    { input: `${LOCAL_64}@example.com`, expected: `${LOCAL_64}@example.com` },
    { input: "", expected: null },
    { input: "   ", expected: null },
    { input: null, expected: null },
    { input: undefined, expected: null },
  ];
  for (const { input, expected } of accepted) {
    it(`normalizes ${show(input)} to ${show(expected)}`, () => {
      assert.equal(normalizeEmail(input), expected);
    });
  }
});

describe("normalizePhoneNumber", () => {
  const accepted: readonly { input: unknown; expected: string | null }[] = [
    { input: "123456", expected: "123456" },
    { input: " +44 (20) 7946-0958 ", expected: "+442079460958" },
    { input: "123-456", expected: "123456" },
    { input: "12.34.56", expected: "123456" },
    { input: 123456, expected: "123456" },
    { input: "1234", expected: "1234" },
    { input: "123456789012345", expected: "123456789012345" },
    { input: "+123456789012345", expected: "+123456789012345" },
    { input: 999999999999999, expected: "999999999999999" },
    { input: "", expected: null },
    { input: "  \t ", expected: null },
    { input: " ".repeat(40), expected: null },
    { input: null, expected: null },
    { input: undefined, expected: null },
  ];
  for (const { input, expected } of accepted) {
    it(`normalizes ${show(input)} to ${show(expected)}`, () => {
      assert.equal(normalizePhoneNumber(input), expected);
    });
  }
});

describe("parseIdentifyRequest", () => {
  const accepted: readonly { name: string; body: unknown; expected: IdentifyRequest }[] = [
    {
      name: "trims and lowercases the email, keeps a plain phone",
      body: { email: "  Lorraine@HillValley.EDU ", phoneNumber: "123456" },
      expected: { email: "lorraine@hillvalley.edu", phoneNumber: "123456" },
    },
    {
      name: "accepts an apostrophe in the local part without a phone",
      body: { email: "o'brien@example.com" },
      expected: { email: "o'brien@example.com", phoneNumber: null },
    },
    {
      name: "accepts a plus tag with an explicit null phone",
      body: { email: "first+tag@example.com", phoneNumber: null },
      expected: { email: "first+tag@example.com", phoneNumber: null },
    },
    {
      name: "strips spaces, parentheses and dashes from an international phone",
      body: { phoneNumber: " +44 (20) 7946-0958 " },
      expected: { email: null, phoneNumber: "+442079460958" },
    },
    {
      name: "turns an integer phone into its digits",
      body: { phoneNumber: 123456 },
      expected: { email: null, phoneNumber: "123456" },
    },
    {
      name: "removes a dash from the phone",
      body: { email: null, phoneNumber: "123-456" },
      expected: { email: null, phoneNumber: "123456" },
    },
    {
      name: "treats an empty email as absent",
      body: { email: "", phoneNumber: "123456" },
      expected: { email: null, phoneNumber: "123456" },
    },
    {
      name: "treats a whitespace-only email as absent",
      body: { email: "   ", phoneNumber: "123456" },
      expected: { email: null, phoneNumber: "123456" },
    },
    {
      name: "treats an empty phone as absent",
      body: { email: "doc@hillvalley.edu", phoneNumber: "" },
      expected: { email: "doc@hillvalley.edu", phoneNumber: null },
    },
    {
      name: "treats a whitespace-only phone as absent",
      body: { email: "doc@hillvalley.edu", phoneNumber: "  " },
      expected: { email: "doc@hillvalley.edu", phoneNumber: null },
    },
  ];
  for (const c of accepted) {
    it(c.name, () => {
      assert.deepEqual(parseIdentifyRequest(c.body), c.expected);
    });
  }

  const rejected: readonly { name: string; body: unknown }[] = [
    { name: "both fields absent", body: {} },
    { name: "both fields null", body: { email: null, phoneNumber: null } },
    { name: "both fields empty strings", body: { email: "", phoneNumber: "" } },
    { name: "an unknown key", body: { email: "doc@hillvalley.edu", name: "Doc" } },
    { name: "an array body", body: [{ email: "doc@hillvalley.edu" }] },
    { name: "a null body", body: null },
    { name: "an undefined body", body: undefined },
    { name: "a string body", body: "doc@hillvalley.edu" },
    { name: "a number body", body: 123456 },
    { name: "a nested object as email", body: { email: { address: "doc@hillvalley.edu" } } },
    { name: "a number as email", body: { email: 42, phoneNumber: "123456" } },
    { name: "a boolean phone", body: { phoneNumber: true } },
    { name: "a negative number phone", body: { phoneNumber: -123456 } },
    { name: "a float phone", body: { phoneNumber: 1234.5 } },
    { name: "an unsafe integer phone", body: { phoneNumber: 2 ** 53 } },
    { name: "a NaN phone", body: { phoneNumber: Number.NaN } },
    { name: "a phone of 3 digits", body: { phoneNumber: "123" } },
    { name: "a phone of 16 digits", body: { phoneNumber: "1234567890123456" } },
    { name: "letters in the phone", body: { phoneNumber: "12345a" } },
    { name: "a phone that is a + alone", body: { phoneNumber: "+" } },
    { name: "a + inside the phone", body: { phoneNumber: "1234+5678" } },
    { name: "a phone of punctuation only", body: { phoneNumber: "(-)" } },
    {
      name: "a phone input over 32 characters even with few digits",
      body: { phoneNumber: `1234${" ".repeat(29)}5` },
    },
    { name: "an email with two @", body: { email: "doc@brown@hillvalley.edu" } },
    { name: "an email with no @", body: { email: "doc.hillvalley.edu" } },
    { name: "an email with an empty local part", body: { email: "@hillvalley.edu" } },
    { name: "an email domain without a dot", body: { email: "doc@localhost" } },
    { name: "an email with a trailing dot", body: { email: "doc@hillvalley.edu." } },
    { name: "an email local part with a leading dot", body: { email: ".doc@hillvalley.edu" } },
    { name: "an email of 255 characters", body: { email: EMAIL_255 } },
    { name: "an email local part of 65 characters", body: { email: LOCAL_65_EMAIL } },
    { name: "whitespace inside the email", body: { email: "doc brown@hillvalley.edu" } },
    { name: "a unicode email", body: { email: "josé@example.com" } },
    // The Kelvin sign lowercases to ASCII "k": it must not turn into another customer's address.
    { name: "a Kelvin-sign email", body: { email: "\u212Aelvin@example.com" } },
    {
      name: "an invalid email even when the phone is valid",
      body: { email: "doc@", phoneNumber: "123456" },
    },
    {
      name: "an invalid phone even when the email is valid",
      body: { email: "doc@hillvalley.edu", phoneNumber: "12" },
    },
  ];
  for (const c of rejected) {
    it(`rejects ${c.name} with InvalidInputError`, () => {
      assert.throws(() => parseIdentifyRequest(c.body), isInvalidInput);
    });
  }
});
