import type { CompiledQuery } from "kysely";
import type { CacheDebt, CacheDebtLedger, RecordedDebt } from "../cache/customer-cache.js";
import type { Database } from "./database.js";
import { FixedStatement } from "./fixed-statement.js";
import { storedTime } from "./schema.js";

/**
 * Debts removed by one statement at most: its text has this many parameters whatever the number
 * paid (the last id repeated), so it never depends on the values.
 */
const DEBTS_PER_STATEMENT = 100;

interface DebtRow {
  readonly id: number;
  readonly primaryId: number;
  readonly kind: CacheDebt["kind"];
  readonly version: number;
}

/** The cache's debts in the CacheDebt table (migration 0009), on the database of the service. */
export class SqlCacheDebtLedger implements CacheDebtLedger {
  private readonly insert: FixedStatement<
    [primaryId: number, kind: CacheDebt["kind"], version: number, createdAt: Date | string]
  >;
  private readonly select: FixedStatement<[limit: number]>;
  /** Deletes `DEBTS_PER_STATEMENT` ids (repeats allowed). */
  private readonly remove: FixedStatement<number[]>;

  constructor(private readonly database: Database) {
    const { db } = database;
    this.insert = FixedStatement.compile(4, (primaryId, kind, version, createdAt) =>
      db.insertInto("CacheDebt").values({ primaryId, kind, version, createdAt }).compile(),
    );
    // A range of the key (`id > 0`): an index search on every dialect, not a scan.
    this.select = FixedStatement.compile(1, (limit) =>
      db
        .selectFrom("CacheDebt")
        .select(["id", "primaryId", "kind", "version"])
        .where("id", ">", 0)
        .orderBy("id")
        .limit(limit)
        .compile(),
    );
    this.remove = FixedStatement.compile(DEBTS_PER_STATEMENT, (...ids: number[]) =>
      db.deleteFrom("CacheDebt").where("id", "in", ids).compile(),
    );
  }

  async record(debts: readonly (readonly [number, CacheDebt])[]): Promise<void> {
    const createdAt = storedTime(this.database.dialect, Date.now());
    const queries = debts.map(([primaryId, debt]) =>
      this.insert.bind([primaryId, debt.kind, debt.kind === "floor" ? debt.version : 0, createdAt]),
    );
    await this.write(queries);
  }

  async owed(limit: number): Promise<RecordedDebt[]> {
    const query = this.select.bind([limit]);
    const { sqlite } = this.database;
    const rows = (
      sqlite === null
        ? (await this.database.db.executeQuery(query)).rows
        : await sqlite.read(() => sqlite.run(query))
    ) as DebtRow[];
    return rows.map((row) => ({
      id: row.id,
      primaryId: row.primaryId,
      debt:
        row.kind === "tombstone" ? { kind: "tombstone" } : { kind: "floor", version: row.version },
    }));
  }

  async paid(ids: readonly number[]): Promise<void> {
    const queries: CompiledQuery[] = [];
    for (let i = 0; i < ids.length; i += DEBTS_PER_STATEMENT) {
      const some = ids.slice(i, i + DEBTS_PER_STATEMENT);
      const last = some[some.length - 1] ?? 0;
      queries.push(
        this.remove.bind(Array.from({ length: DEBTS_PER_STATEMENT }, (_, j) => some[j] ?? last)),
      );
    }
    await this.write(queries);
  }

  /** The statements in one transaction (SQLite: in the session's next write batch). */
  private async write(queries: readonly CompiledQuery[]): Promise<void> {
    if (queries.length === 0) {
      return;
    }
    const { sqlite } = this.database;
    if (sqlite !== null) {
      await sqlite.write(() => {
        for (const query of queries) {
          sqlite.run(query);
        }
        return Promise.resolve();
      });
      return;
    }
    await this.database.db.transaction().execute(async (tx) => {
      for (const query of queries) {
        await tx.executeQuery(query);
      }
    });
  }
}
