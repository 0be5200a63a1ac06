import { sql } from "kysely";
import type { Kysely } from "kysely";
import type { DB } from "./schema.js";

/** Counts of the live rows (deletedAt null) of the Contact table. */
export interface ContactStats {
  readonly contacts: number;
  /** Customers with a live row (one whose primary was soft-deleted counts while a row lives). */
  readonly customers: number;
  /**
   * The customer with the most live rows (the lower primary id on a tie), under the id the API
   * answers with: its primary, or, if that row is soft-deleted, its oldest live row (which stands
   * in for it). Null with no live row.
   */
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
          eb.fn.count(customerOf).distinct().as("customers"),
        ])
        .where("deletedAt", "is", null)
        .as("totals"),
    )
    .leftJoin(
      (qb) =>
        qb
          .selectFrom("Contact")
          .select((eb) => [customerOf.as("customerKey"), eb.fn.countAll().as("size")])
          .where("deletedAt", "is", null)
          .groupBy(customerOf)
          .orderBy("size", "desc")
          .orderBy("customerKey", "asc")
          .limit(1)
          .as("largest"),
      (join) => join.onTrue(),
    )
    .select((eb) => [
      "totals.contacts",
      "totals.customers",
      "largest.size",
      // The id the API answers with: the primary if it is live, else the oldest live row.
      eb
        .selectFrom("Contact as member")
        .select("member.id")
        .where("member.deletedAt", "is", null)
        .where((member) =>
          member.or([
            member("member.id", "=", member.ref("largest.customerKey")),
            member("member.linkedId", "=", member.ref("largest.customerKey")),
          ]),
        )
        .orderBy((member) =>
          member
            .case()
            .when("member.id", "=", member.ref("largest.customerKey"))
            .then(0)
            .else(1)
            .end(),
        )
        .orderBy("member.createdAt")
        .orderBy("member.id")
        .limit(1)
        .as("primaryContactId"),
    ])
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
