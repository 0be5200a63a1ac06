import type { Contact, Customer, IdentifyRequest } from "./contact.js";
import { compareAge, groupOf } from "./contact.js";

export type IdentifyOutcome = "created" | "secondary_added" | "merged" | "unchanged";

/** A row the plan inserts: a primary when the plan has no winner, else a secondary of it. */
export interface PlannedInsert {
  readonly email: string | null;
  readonly phoneNumber: string | null;
  readonly createdAt: number;
}

/** What one identify request changes in the Contact table. */
export interface ReconcilePlan {
  readonly outcome: IdentifyOutcome;
  /** The primary of the resulting customer; null when the request creates a new customer. */
  readonly winnerId: number | null;
  /**
   * When the winner is not a primary yet (its own primary was soft-deleted, so the oldest live row
   * of that customer stands in for it) and must be promoted: that customer, the soft-deleted
   * primary's id. Null otherwise.
   */
  readonly promotedFrom: number | null;
  /**
   * Customers (by primary id) whose rows, the primary included, must point at the winner. Each
   * excludes the winner row itself; sorted ascending.
   */
  readonly relinkGroups: readonly number[];
  readonly insert: PlannedInsert | null;
  /** The live rows of the resulting customer as they will be after the plan, minus the insert. */
  readonly members: readonly Contact[];
}

function isMatch(row: Contact, request: IdentifyRequest): boolean {
  return (
    (request.email !== null && row.email === request.email) ||
    (request.phoneNumber !== null && row.phoneNumber === request.phoneNumber)
  );
}

/** The customers (primary ids, ascending) that have a row sharing the request's email or phone. */
export function matchedGroups(request: IdentifyRequest, rows: readonly Contact[]): number[] {
  const groups = new Set<number>();
  for (const row of rows) {
    if (isMatch(row, request)) {
      groups.add(groupOf(row));
    }
  }
  return [...groups].sort((a, b) => a - b);
}

/**
 * Plans the reconciliation of one normalized request against `rows`: the live rows of every
 * customer that has a row sharing the request's email or phone (extra rows of other customers are
 * ignored). `now` is the time of the request in ms; the inserted row's createdAt is never older
 * than any member row, so a new row never becomes the oldest of its customer.
 *
 * Rules: no match creates a primary. Otherwise the oldest primary of the matched customers wins,
 * every other matched customer moves under it (links never chain), and one secondary is inserted
 * only when the request brings an email or phone the merged customer lacks.
 */
export function planIdentify(
  request: IdentifyRequest,
  rows: readonly Contact[],
  now: number,
): ReconcilePlan {
  const groups = new Set(matchedGroups(request, rows));
  if (groups.size === 0) {
    return {
      outcome: "created",
      winnerId: null,
      promotedFrom: null,
      relinkGroups: [],
      insert: { email: request.email, phoneNumber: request.phoneNumber, createdAt: now },
      members: [],
    };
  }

  const involved = rows.filter((row) => groups.has(groupOf(row)));
  // The root of a customer is its primary, or, if that row is soft-deleted, its oldest live row.
  const roots = new Map<number, Contact>();
  for (const row of involved) {
    const group = groupOf(row);
    const current = roots.get(group);
    if (
      current === undefined ||
      row.id === group ||
      (current.id !== group && compareAge(row, current) < 0)
    ) {
      roots.set(group, row);
    }
  }
  let winner: Contact | undefined;
  for (const root of roots.values()) {
    if (winner === undefined || compareAge(root, winner) < 0) {
      winner = root;
    }
  }
  if (winner === undefined) {
    throw new Error("unreachable: a matched customer has no root");
  }
  const winnerId = winner.id;
  const promotedFrom = winner.linkedId;
  const promoteWinner = promotedFrom !== null;
  const relinkGroups = [...groups].filter((group) => group !== winnerId).sort((a, b) => a - b);

  const members = involved.map((row): Contact => {
    if (row.id === winnerId) {
      return promoteWinner ? { ...row, linkedId: null, linkPrecedence: "primary" } : row;
    }
    if (row.linkedId === winnerId) {
      return row;
    }
    return { ...row, linkedId: winnerId, linkPrecedence: "secondary" };
  });

  const knownEmail = request.email === null || members.some((row) => row.email === request.email);
  const knownPhone =
    request.phoneNumber === null || members.some((row) => row.phoneNumber === request.phoneNumber);
  let insert: PlannedInsert | null = null;
  if (!knownEmail || !knownPhone) {
    const newest = Math.max(...members.map((row) => row.createdAt));
    insert = {
      email: request.email,
      phoneNumber: request.phoneNumber,
      createdAt: Math.max(now, newest),
    };
  }
  const changesLinks = promoteWinner || relinkGroups.length > 0;
  const outcome = changesLinks ? "merged" : insert !== null ? "secondary_added" : "unchanged";
  return { outcome, winnerId, promotedFrom, relinkGroups, insert, members };
}

/**
 * Builds the answer for the customer whose primary is `primaryId` from its live rows (the
 * primary among them). Emails and phones are distinct and non-null, the primary's first and then
 * in creation order; secondary ids in creation order.
 */
export function consolidate(primaryId: number, rows: readonly Contact[]): Customer {
  const ordered = [...rows].sort(
    (a, b) => Number(b.id === primaryId) - Number(a.id === primaryId) || compareAge(a, b),
  );
  const emails = new Set<string>();
  const phoneNumbers = new Set<string>();
  const secondaryContactIds: number[] = [];
  for (const row of ordered) {
    if (row.email !== null) {
      emails.add(row.email);
    }
    if (row.phoneNumber !== null) {
      phoneNumbers.add(row.phoneNumber);
    }
    if (row.id !== primaryId) {
      secondaryContactIds.push(row.id);
    }
  }
  return {
    primaryContactId: primaryId,
    emails: [...emails],
    phoneNumbers: [...phoneNumbers],
    secondaryContactIds,
  };
}
