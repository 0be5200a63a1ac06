import type { Kysely } from "kysely";
import type { DB, MergeKind } from "./schema.js";

/** One customer moved under another, as the merge log has it. */
export interface MergeRecord {
  /** When the writer made the merge (its clock; the log's order is `id`'s, not this). */
  readonly at: string;
  /** The primary the customer moved under (the older one; for a promotion, the stand-in). */
  readonly winnerId: number;
  /** The moved customer's primary then (a secondary of `winnerId` since, or soft-deleted). */
  readonly mergedId: number;
  /**
   * `bridge`: the request carried identifiers of both customers. `promotion`: `mergedId` was
   * soft-deleted, and `winnerId`, the oldest live row of its customer, became the primary.
   */
  readonly kind: MergeKind;
  /** The identifiers of the request that made the merge, normalized. */
  readonly email: string | null;
  readonly phoneNumber: string | null;
}

/**
 * Every merge that went into the customer made of the groups `roots` (its primary; also, while a
 * soft-deleted primary's stand-in awaits promotion, that primary's id): the customers merged into
 * them, and for each of those the merges that had gone into it before, in the order they were
 * committed. A later merge of a customer waits for the row lock of that customer's primary, so
 * it is logged after the earlier one. Reads only.
 */
export async function readMergeHistory(
  db: Kysely<DB>,
  roots: readonly number[],
): Promise<MergeRecord[]> {
  const records: { readonly id: number; readonly record: MergeRecord }[] = [];
  const seen = new Set<number>(roots);
  const pending = [...roots];
  for (let winner = pending.pop(); winner !== undefined; winner = pending.pop()) {
    const rows = await db
      .selectFrom("ContactMerge")
      .select(["id", "winnerId", "mergedId", "kind", "email", "phoneNumber", "createdAt"])
      .where("winnerId", "=", winner)
      .execute();
    for (const { id, createdAt, ...merge } of rows) {
      records.push({ id, record: { at: new Date(createdAt).toISOString(), ...merge } });
      if (!seen.has(merge.mergedId)) {
        seen.add(merge.mergedId);
        pending.push(merge.mergedId);
      }
    }
  }
  return records.sort((a, b) => a.id - b.id).map(({ record }) => record);
}
