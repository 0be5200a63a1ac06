import type { Customer, IdentifyRequest } from "../../src/domain/contact.js";

let counter = 0;

/**
 * A customer of one row that no other call returns (its email, phone number and primary id are
 * new), with the request that names both its identifiers: for the cache tests.
 */
export function freshCustomer(): { request: IdentifyRequest; customer: Customer } {
  counter++;
  const email = `doc${counter}@hillvalley.edu`;
  const phoneNumber = `+1555${String(counter).padStart(6, "0")}`;
  return {
    request: { email, phoneNumber },
    customer: {
      primaryContactId: 1000 + counter,
      emails: [email],
      phoneNumbers: [phoneNumber],
      secondaryContactIds: [],
    },
  };
}
