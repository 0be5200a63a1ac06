import { hash } from "node:crypto";

export type LinkPrecedence = "primary" | "secondary";

/** A live (not soft-deleted) row of the Contact table, as the domain sees it. */
export interface Contact {
  readonly id: number;
  readonly email: string | null;
  readonly phoneNumber: string | null;
  /** The primary this row belongs to; null for a primary. Links never chain. */
  readonly linkedId: number | null;
  readonly linkPrecedence: LinkPrecedence;
  /** Milliseconds since the epoch. */
  readonly createdAt: number;
}

/**
 * A normalized identify request: at least one of the two is non-null, both are already
 * trimmed, lowercased (email) and stripped of punctuation (phone).
 */
export interface IdentifyRequest {
  readonly email: string | null;
  readonly phoneNumber: string | null;
}

/** The consolidated customer, in the shape the API answers with. */
export interface Customer {
  readonly primaryContactId: number;
  readonly emails: string[];
  readonly phoneNumbers: string[];
  readonly secondaryContactIds: number[];
}

/** Orders rows oldest first: by createdAt, then by the lower id. */
export function compareAge(a: Contact, b: Contact): number {
  return a.createdAt - b.createdAt || a.id - b.id;
}

/** The id of the customer (primary) a row belongs to. */
export function groupOf(row: Contact): number {
  return row.linkedId ?? row.id;
}

/**
 * The keys of a request's identifiers (`email:…`, `phone:…`), used for locks and the cache index.
 * Equal identifiers give equal keys.
 */
export function identifierKeys(request: IdentifyRequest): string[] {
  const keys: string[] = [];
  if (request.email !== null) {
    keys.push(`email:${request.email}`);
  }
  if (request.phoneNumber !== null) {
    keys.push(`phone:${request.phoneNumber}`);
  }
  return keys;
}

/**
 * The hex SHA-256 of an identifier key: what names an identifier outside the process (its lock on
 * a database server, its cache index key), so that no email or phone reaches either.
 */
export function identifierDigest(identifierKey: string): string {
  return hash("sha256", identifierKey, "hex");
}

/** True when the customer already holds every value the request carries. */
export function customerHolds(customer: Customer, request: IdentifyRequest): boolean {
  return (
    (request.email === null || customer.emails.includes(request.email)) &&
    (request.phoneNumber === null || customer.phoneNumbers.includes(request.phoneNumber))
  );
}
