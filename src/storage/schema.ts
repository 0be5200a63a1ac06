import type { ColumnType, Generated, Selectable } from "kysely";
import type { LinkPrecedence } from "../domain/contact.js";
import type { DialectName } from "./database.js";

/** SQLite stores timestamps as ISO-8601 text; MySQL/MariaDB and PostgreSQL as native timestamps. */
type Timestamp = ColumnType<Date | string, Date | string, Date | string>;

/** The time `ms` (milliseconds since the epoch) as `dialect` stores it (see Timestamp). */
export function storedTime(dialect: DialectName, ms: number): Date | string {
  return dialect === "sqlite" ? new Date(ms).toISOString() : new Date(ms);
}

export interface ContactTable {
  id: Generated<number>;
  phoneNumber: string | null;
  email: string | null;
  linkedId: number | null;
  linkPrecedence: LinkPrecedence;
  createdAt: Timestamp;
  updatedAt: Timestamp;
  deletedAt: ColumnType<Date | string | null, Date | string | null, Date | string | null>;
}

/**
 * Why a customer moved under another: a request bridged the two, or the customer's primary was
 * soft-deleted and its oldest live row (the winner) was promoted in its place.
 */
export type MergeKind = "bridge" | "promotion";

/** The merge log: a customer (`mergedId`, its primary then) moved under `winnerId`. */
export interface ContactMergeTable {
  id: Generated<number>;
  winnerId: number;
  mergedId: number;
  kind: MergeKind;
  /** The bridging request's identifiers, normalized. */
  email: string | null;
  phoneNumber: string | null;
  createdAt: Timestamp;
}

/** SQLite only: a customer's answer, kept ready (migration 0003). */
export interface CustomerAnswerTable {
  primaryId: number;
  /** The API's answer for the customer, as JSON text. */
  answer: string;
}

/**
 * What the cache owes Redis, for any instance to pay (migration 0009): a floor at `version` for
 * the customer of `primaryId`, or a tombstone (`version` 0) for a primary merged away.
 */
export interface CacheDebtTable {
  id: Generated<number>;
  primaryId: number;
  kind: "floor" | "tombstone";
  version: number;
  createdAt: Timestamp;
}

export interface DB {
  Contact: ContactTable;
  ContactMerge: ContactMergeTable;
  CustomerAnswer: CustomerAnswerTable;
  CacheDebt: CacheDebtTable;
}

export type ContactRow = Selectable<ContactTable>;
