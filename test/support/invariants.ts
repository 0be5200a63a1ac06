import type { StoredContact } from "./databases.js";

/** The answer shape of POST /identify. */
export interface Answer {
  primaryContactId: number;
  emails: string[];
  phoneNumbers: string[];
  secondaryContactIds: number[];
}

function older(a: StoredContact, b: StoredContact): number {
  return a.createdAt - b.createdAt || a.id - b.id;
}

/** The live rows grouped by customer (primary id); rows whose primary is missing are reported. */
export function customersOf(rows: readonly StoredContact[]): Map<number, StoredContact[]> {
  const customers = new Map<number, StoredContact[]>();
  for (const row of rows) {
    if (row.deletedAt !== null) {
      continue;
    }
    const key = row.linkedId ?? row.id;
    const members = customers.get(key) ?? [];
    members.push(row);
    customers.set(key, members);
  }
  return customers;
}

/**
 * Every way the stored graph breaks the rules, as readable lines (empty when it is sound):
 * primary/secondary consistency, no chains, the primary is the oldest row of its customer, no
 * email or phone in two customers, and no needless row (each row brings a value its customer
 * lacked when it was created).
 */
export function invariantViolations(rows: readonly StoredContact[]): string[] {
  const problems: string[] = [];
  const byId = new Map(rows.map((row) => [row.id, row]));
  for (const row of rows) {
    if (row.deletedAt !== null) {
      continue;
    }
    if ((row.linkPrecedence === "primary") !== (row.linkedId === null)) {
      problems.push(
        `row ${row.id}: precedence ${row.linkPrecedence} with linkedId ${row.linkedId}`,
      );
    }
    if (row.linkedId !== null) {
      const target = byId.get(row.linkedId);
      if (target === undefined) {
        problems.push(`row ${row.id}: linkedId ${row.linkedId} does not exist`);
      } else if (target.linkedId !== null || target.linkPrecedence !== "primary") {
        problems.push(`row ${row.id}: chain through ${target.id} to ${target.linkedId}`);
      }
    }
    if (row.email === null && row.phoneNumber === null) {
      problems.push(`row ${row.id}: neither email nor phone`);
    }
  }
  const owner = new Map<string, number>();
  for (const [primaryId, members] of customersOf(rows)) {
    const sorted = [...members].sort(older);
    if (sorted[0]?.id !== primaryId) {
      problems.push(`customer ${primaryId}: oldest row is ${sorted[0]?.id}, not the primary`);
    }
    const seen = new Set<string>();
    for (const row of sorted) {
      const values = [
        row.email === null ? null : `email:${row.email}`,
        row.phoneNumber === null ? null : `phone:${row.phoneNumber}`,
      ].filter((v): v is string => v !== null);
      if (row.id !== primaryId && values.every((v) => seen.has(v))) {
        problems.push(`customer ${primaryId}: row ${row.id} brings nothing new`);
      }
      for (const value of values) {
        seen.add(value);
        const other = owner.get(value);
        if (other !== undefined && other !== primaryId) {
          problems.push(`${value} is in customers ${other} and ${primaryId}`);
        }
        owner.set(value, primaryId);
      }
    }
  }
  return problems;
}

/**
 * The answer the service must give for `primaryId`, computed from the stored rows: the primary's
 * values first, then in creation order, distinct; secondaries in creation order.
 */
export function expectedAnswer(rows: readonly StoredContact[], primaryId: number): Answer {
  const members = customersOf(rows).get(primaryId) ?? [];
  const sorted = [...members].sort(
    (a, b) => Number(b.id === primaryId) - Number(a.id === primaryId) || older(a, b),
  );
  const unique = (values: (string | null)[]) => [
    ...new Set(values.filter((v): v is string => v !== null)),
  ];
  return {
    primaryContactId: primaryId,
    emails: unique(sorted.map((r) => r.email)),
    phoneNumbers: unique(sorted.map((r) => r.phoneNumber)),
    secondaryContactIds: sorted.filter((r) => r.id !== primaryId).map((r) => r.id),
  };
}

/**
 * Every kept answer (SQLite, migration 0003) that is not the answer computed from the rows, or
 * that is kept for anything but a live primary; empty when they all agree.
 */
export function keptAnswerViolations(
  rows: readonly StoredContact[],
  kept: ReadonlyMap<number, string>,
): string[] {
  const livePrimaries = new Set(
    rows.filter((row) => row.deletedAt === null && row.linkedId === null).map((row) => row.id),
  );
  const problems: string[] = [];
  for (const [primaryId, answer] of kept) {
    if (!livePrimaries.has(primaryId)) {
      problems.push(`answer kept for ${primaryId}, which is no live primary`);
    } else if (answer !== JSON.stringify(expectedAnswer(rows, primaryId))) {
      problems.push(`answer kept for ${primaryId} is not its rows': ${answer}`);
    }
  }
  return problems;
}

/** Connected components of identifiers, where each request links the identifiers it carries. */
export class Components {
  private readonly parent = new Map<string, string>();

  add(...identifiers: string[]): void {
    for (const id of identifiers) {
      if (!this.parent.has(id)) {
        this.parent.set(id, id);
      }
    }
    for (let i = 1; i < identifiers.length; i++) {
      const a = this.find(identifiers[0] ?? "");
      const b = this.find(identifiers[i] ?? "");
      if (a !== b) {
        this.parent.set(a, b);
      }
    }
  }

  find(id: string): string {
    let root = id;
    while (this.parent.get(root) !== root) {
      root = this.parent.get(root) ?? root;
    }
    return root;
  }

  /** Every identifier, grouped by component. */
  groups(): string[][] {
    const groups = new Map<string, string[]>();
    for (const id of this.parent.keys()) {
      const root = this.find(id);
      groups.set(root, [...(groups.get(root) ?? []), id]);
    }
    return [...groups.values()];
  }
}

/** A small deterministic PRNG (mulberry32) so a failing run can be replayed from its seed. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Runs `task(i)` for i in [0, count) with at most `inFlight` running at once. */
export async function runPool(
  count: number,
  inFlight: number,
  task: (index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const index = next++;
      await task(index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker));
}
