import { sql } from "kysely";
import type { Kysely } from "kysely";
import type { DB } from "./schema.js";

/** Counts of the live rows (deletedAt null) of the Contact table. */
export interface ContactStats {
  readonly contacts: number;
  /** Customers with a live row (one whose primary was soft-deleted counts while a row lives). */
  readonly customers: number;
  /**
   * The customer with the most live rows, under the id the API answers with: its primary, or, if
   * that row is soft-deleted, its oldest live row (which stands in for it); on a tie, the lower of
   * those ids. Null with no live row.
   */
  readonly largestCustomer: { readonly primaryContactId: number; readonly contacts: number } | null;
}

/**
 * Reads the contact and customer counts and the largest customer in one statement, so all three
 * come from one snapshot. A customer is keyed by coalesce(linkedId, id): rows whose primary was
 * soft-deleted still count towards it. Each live row is ranked within its customer as the service
 * picks a customer's root (planIdentify: the primary first, then by createdAt and id), so the row
 * ranked first is the id the API answers with. Reads only; takes no lock.
 */
export async function readContactStats(db: Kysely<DB>): Promise<ContactStats> {
  const customerOf = sql<number>`coalesce(${sql.ref("linkedId")}, ${sql.ref("id")})`;
  // 1 for the row the API answers with; the primary first, then by createdAt and id.
  const seniority = sql<number>`row_number() over (
    partition by ${customerOf}
    order by case when ${sql.ref("id")} = ${customerOf} then 0 else 1 end,
      ${sql.ref("createdAt")}, ${sql.ref("id")}
  )`;
  const row = await db
    .with("live", (qb) =>
      qb
        .selectFrom("Contact")
        .select([
          "id",
          seniority.as("seniority"),
          sql<number | string>`count(*) over (partition by ${customerOf})`.as("size"),
        ])
        .where("deletedAt", "is", null),
    )
    .selectFrom((qb) =>
      qb
        .selectFrom("live")
        .select((eb) => [
          eb.fn.countAll().as("contacts"),
          eb.fn.count(eb.case().when("seniority", "=", 1).then(1).end()).as("customers"),
        ])
        .as("totals"),
    )
    .leftJoin(
      (qb) =>
        qb
          .selectFrom("live")
          .select(["id as primaryContactId", "size"])
          .where("seniority", "=", 1)
          .orderBy("size", "desc")
          .orderBy("id", "asc")
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
