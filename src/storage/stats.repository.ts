import { sql } from "kysely";
import type { Kysely } from "kysely";
import type { DB } from "./schema.js";

/** Counts of the live rows (deletedAt null) of the Contact table. */
export interface ContactStats {
  readonly contacts: number;
  /** Live primaries. */
  readonly customers: number;
  /** The customer with the most live rows (lower primary id on a tie); null with no live row. */
  readonly largestCustomer: { readonly primaryContactId: number; readonly contacts: number } | null;
}

/**
 * Reads the contact and customer counts and the largest customer in one statement, so all three
 * come from one snapshot. A customer is keyed by coalesce(linkedId, id): rows whose primary was
 * soft-deleted still count towards it. Reads only; takes no lock.
 */
export async function readContactStats(db: Kysely<DB>): Promise<ContactStats> {
  const customerOf = sql<number>`coalesce(${sql.ref("linkedId")}, ${sql.ref("id")})`;
  const row = await db
    .selectFrom((qb) =>
      qb
        .selectFrom("Contact")
        .select((eb) => [
          eb.fn.countAll().as("contacts"),
          eb.fn
            .count(eb.case().when("linkPrecedence", "=", "primary").then(1).end())
            .as("customers"),
        ])
        .where("deletedAt", "is", null)
        .as("totals"),
    )
    .leftJoin(
      (qb) =>
        qb
          .selectFrom("Contact")
          .select((eb) => [customerOf.as("primaryContactId"), eb.fn.countAll().as("size")])
          .where("deletedAt", "is", null)
          .groupBy(customerOf)
          .orderBy("size", "desc")
          .orderBy("primaryContactId", "asc")
          .limit(1)
          .as("largest"),
      (join) => join.onTrue(),
    )
    .select(["totals.contacts", "totals.customers", "largest.primaryContactId", "largest.size"])
    .executeTakeFirstOrThrow();
  // PostgreSQL returns counts (bigint) as strings.
  return {
    contacts: Number(row.contacts),
    customers: Number(row.customers),
    largestCustomer:
      row.primaryContactId === null || row.size === null
        ? null
        : { primaryContactId: row.primaryContactId, contacts: Number(row.size) },
  };
}
