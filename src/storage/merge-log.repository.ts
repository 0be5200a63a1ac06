import type { Kysely } from "kysely";
import type { DB } from "./schema.js";

/** One customer moved under another, as the merge log has it. */
export interface MergeRecord {
  /** When the merge was committed (ISO 8601). */
  readonly at: string;
  /** The primary the customer moved under (the older one). */
  readonly winnerId: number;
  /** The moved customer's primary then (a secondary of `winnerId` since). */
  readonly mergedId: number;
  /** The identifiers of the request that bridged the two, normalized. */
  readonly email: string | null;
  readonly phoneNumber: string | null;
}

/**
 * Every merge that went into the customer whose primary is `primaryId`: the customers merged into
 * it, and, for each of those, the merges that had gone into it before, oldest first. Reads only.
 */
export async function readMergeHistory(db: Kysely<DB>, primaryId: number): Promise<MergeRecord[]> {
  const records: { readonly id: number; readonly record: MergeRecord }[] = [];
  const seen = new Set<number>([primaryId]);
  const pending = [primaryId];
  for (let winner = pending.pop(); winner !== undefined; winner = pending.pop()) {
    const rows = await db
      .selectFrom("ContactMerge")
      .select(["id", "winnerId", "mergedId", "email", "phoneNumber", "createdAt"])
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
  return records
    .sort((a, b) => a.record.at.localeCompare(b.record.at) || a.id - b.id)
    .map(({ record }) => record);
}
