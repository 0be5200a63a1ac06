import { describe, it } from "node:test";
import assert from "node:assert/strict";

import type { Contact, Customer, IdentifyRequest } from "../../src/domain/contact.js";
import type { ReconcilePlan } from "../../src/domain/reconcile.js";
import { consolidate, matchedGroups, planIdentify } from "../../src/domain/reconcile.js";

const BASE = Date.UTC(2023, 3, 1);
const NOW = at(600);

/** A time `minutes` after BASE, in ms. */
function at(minutes: number): number {
  return BASE + minutes * 60_000;
}

/** A frozen live row; precedence follows linkedId, and freezing catches a planner that mutates. */
function row(
  id: number,
  email: string | null,
  phoneNumber: string | null,
  linkedId: number | null,
  createdAt: number,
): Contact {
  return Object.freeze({
    id,
    email,
    phoneNumber,
    linkedId,
    linkPrecedence: linkedId === null ? "primary" : "secondary",
    createdAt,
  });
}

function request(email: string | null, phoneNumber: string | null): IdentifyRequest {
  return { email, phoneNumber };
}

/** Members are a set of rows: compare them in id order. */
function byId(plan: ReconcilePlan): ReconcilePlan {
  return { ...plan, members: [...plan.members].sort((a, b) => a.id - b.id) };
}

/** The answer once the store has applied the plan, giving the inserted row `insertedId`. */
function answerAfter(plan: ReconcilePlan, insertedId: number | undefined): Customer {
  const rows = [...plan.members];
  if (plan.insert !== null) {
    if (insertedId === undefined) {
      assert.fail("the case plans an insert but gives no insertedId");
    }
    const { email, phoneNumber, createdAt } = plan.insert;
    rows.push(row(insertedId, email, phoneNumber, plan.winnerId, createdAt));
  }
  const primaryId = plan.winnerId ?? insertedId;
  if (primaryId === undefined) {
    assert.fail("a plan without a winner must insert");
  }
  return consolidate(primaryId, rows);
}

interface PlanCase {
  readonly name: string;
  readonly rows: readonly Contact[];
  readonly request: IdentifyRequest;
  readonly now?: number;
  /** Full plan; members listed in id order. */
  readonly plan: ReconcilePlan;
  /** The id the store gives the planned insert. */
  readonly insertedId?: number;
  readonly answer: Customer;
}

function runPlanCases(cases: readonly PlanCase[]): void {
  for (const c of cases) {
    it(c.name, () => {
      const now = c.now ?? NOW;
      const plan = planIdentify(c.request, c.rows, now);
      assert.deepEqual(byId(plan), c.plan);
      // The store returns rows in no particular order; the plan must not depend on it.
      const reversed = planIdentify(c.request, [...c.rows].reverse(), now);
      assert.deepEqual(byId(reversed), c.plan, "plan changed when the rows were reversed");
      assert.deepEqual(answerAfter(plan, c.insertedId), c.answer);
    });
  }
}

// The worked examples of the spec.
const LORRAINE = "lorraine@hillvalley.edu";
const MCFLY = "mcfly@hillvalley.edu";
const GEORGE = "george@hillvalley.edu";
const BIFF = "biffsucks@hillvalley.edu";

const lorraine = row(1, LORRAINE, "123456", null, at(0));
const mcfly = row(2, MCFLY, "123456", 1, at(1));
const lorraineAnswer: Customer = {
  primaryContactId: 1,
  emails: [LORRAINE, MCFLY],
  phoneNumbers: ["123456"],
  secondaryContactIds: [2],
};

function lorraineUnchanged(email: string | null, phoneNumber: string | null): PlanCase {
  return {
    name: `request (${String(email)}, ${String(phoneNumber)}) against Lorraine's two rows changes nothing`,
    rows: [lorraine, mcfly],
    request: request(email, phoneNumber),
    plan: {
      outcome: "unchanged",
      winnerId: 1,
      promotedFrom: null,
      relinkGroups: [],
      insert: null,
      members: [lorraine, mcfly],
    },
    answer: lorraineAnswer,
  };
}

const george = row(1, GEORGE, "919191", null, at(0));
const biff = row(2, BIFF, "717171", null, at(1));
function georgeBiffMerge(email: string, phoneNumber: string): PlanCase {
  return {
    name: `request (${email}, ${phoneNumber}) merges the younger primary Biff under George`,
    rows: [george, biff],
    request: request(email, phoneNumber),
    plan: {
      outcome: "merged",
      winnerId: 1,
      promotedFrom: null,
      relinkGroups: [2],
      insert: null,
      members: [george, row(2, BIFF, "717171", 1, at(1))],
    },
    answer: {
      primaryContactId: 1,
      emails: [GEORGE, BIFF],
      phoneNumbers: ["919191", "717171"],
      secondaryContactIds: [2],
    },
  };
}

describe("planIdentify: the spec's worked examples", () => {
  runPlanCases([
    {
      name: "a request matching no row creates a primary stamped with now",
      rows: [],
      request: request("doc@hillvalley.edu", "555123"),
      plan: {
        outcome: "created",
        winnerId: null,
        promotedFrom: null,
        relinkGroups: [],
        insert: { email: "doc@hillvalley.edu", phoneNumber: "555123", createdAt: NOW },
        members: [],
      },
      insertedId: 1,
      answer: {
        primaryContactId: 1,
        emails: ["doc@hillvalley.edu"],
        phoneNumbers: ["555123"],
        secondaryContactIds: [],
      },
    },
    {
      name: "a new email with a known phone adds a secondary linked to the primary",
      rows: [lorraine],
      request: request(MCFLY, "123456"),
      plan: {
        outcome: "secondary_added",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [],
        insert: { email: MCFLY, phoneNumber: "123456", createdAt: NOW },
        members: [lorraine],
      },
      insertedId: 2,
      answer: lorraineAnswer,
    },
    lorraineUnchanged(null, "123456"),
    lorraineUnchanged(LORRAINE, null),
    lorraineUnchanged(MCFLY, null),
    lorraineUnchanged(LORRAINE, "123456"),
    lorraineUnchanged(MCFLY, "123456"),
    georgeBiffMerge(GEORGE, "717171"),
    georgeBiffMerge(BIFF, "919191"),
  ]);
});

describe("planIdentify: merging customers", () => {
  runPlanCases([
    {
      name: "a customer passed in the rows but not matched is neither a member nor relinked",
      rows: [
        row(3, "c@example.com", "3333", null, at(0)),
        row(4, "c2@example.com", "3334", 3, at(1)),
        row(1, "a@example.com", "1111", null, at(2)),
        row(2, "b@example.com", "2222", null, at(3)),
      ],
      request: request("a@example.com", "2222"),
      plan: {
        outcome: "merged",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [2],
        insert: null,
        members: [
          row(1, "a@example.com", "1111", null, at(2)),
          row(2, "b@example.com", "2222", 1, at(3)),
        ],
      },
      answer: {
        primaryContactId: 1,
        emails: ["a@example.com", "b@example.com"],
        phoneNumbers: ["1111", "2222"],
        secondaryContactIds: [2],
      },
    },
    {
      name: "the loser's secondaries move under the winner and ids follow creation order",
      rows: [
        row(1, "a@example.com", "1111", null, at(0)),
        row(5, "a5@example.com", "1111", 1, at(3)),
        row(2, "b@example.com", "2222", null, at(1)),
        row(3, null, "2223", 2, at(4)),
        row(4, "b@example.com", "2224", 2, at(2)),
      ],
      request: request("a@example.com", "2223"),
      plan: {
        outcome: "merged",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [2],
        insert: null,
        members: [
          row(1, "a@example.com", "1111", null, at(0)),
          row(2, "b@example.com", "2222", 1, at(1)),
          row(3, null, "2223", 1, at(4)),
          row(4, "b@example.com", "2224", 1, at(2)),
          row(5, "a5@example.com", "1111", 1, at(3)),
        ],
      },
      answer: {
        primaryContactId: 1,
        emails: ["a@example.com", "b@example.com", "a5@example.com"],
        phoneNumbers: ["1111", "2222", "2224", "2223"],
        secondaryContactIds: [2, 4, 5, 3],
      },
    },
    {
      name: "the oldest primary wins even when it has the higher id",
      rows: [
        row(3, "young@example.com", "3333", null, at(1)),
        row(5, "old@example.com", "5555", null, at(0)),
      ],
      request: request("young@example.com", "5555"),
      plan: {
        outcome: "merged",
        winnerId: 5,
        promotedFrom: null,
        relinkGroups: [3],
        insert: null,
        members: [
          row(3, "young@example.com", "3333", 5, at(1)),
          row(5, "old@example.com", "5555", null, at(0)),
        ],
      },
      answer: {
        primaryContactId: 5,
        emails: ["old@example.com", "young@example.com"],
        phoneNumbers: ["5555", "3333"],
        secondaryContactIds: [3],
      },
    },
    {
      name: "primaries created at the same instant: the lower id wins",
      rows: [
        row(9, "nine@example.com", "9999", null, at(0)),
        row(8, "eight@example.com", "8888", null, at(0)),
      ],
      request: request("nine@example.com", "8888"),
      plan: {
        outcome: "merged",
        winnerId: 8,
        promotedFrom: null,
        relinkGroups: [9],
        insert: null,
        members: [
          row(8, "eight@example.com", "8888", null, at(0)),
          row(9, "nine@example.com", "9999", 8, at(0)),
        ],
      },
      answer: {
        primaryContactId: 8,
        emails: ["eight@example.com", "nine@example.com"],
        phoneNumbers: ["8888", "9999"],
        secondaryContactIds: [9],
      },
    },
    {
      name: "an email of one customer with a new phone adds a secondary and merges nothing",
      rows: [
        row(1, "a@example.com", "1111", null, at(0)),
        row(2, "b@example.com", "2222", null, at(1)),
      ],
      request: request("a@example.com", "9999"),
      plan: {
        outcome: "secondary_added",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [],
        insert: { email: "a@example.com", phoneNumber: "9999", createdAt: NOW },
        members: [row(1, "a@example.com", "1111", null, at(0))],
      },
      insertedId: 3,
      answer: {
        primaryContactId: 1,
        emails: ["a@example.com"],
        phoneNumbers: ["1111", "9999"],
        secondaryContactIds: [3],
      },
    },
    {
      // With one email and one phone, a merge needs each to match a different customer, so
      // both are known; only data breaking the one-customer-per-value invariant (say, an
      // import) lets a merge also bring a new value.
      name: "an email held by two customers with a new phone merges them and inserts",
      rows: [
        row(1, "shared@example.com", "1111", null, at(0)),
        row(2, "shared@example.com", "2222", null, at(1)),
      ],
      request: request("shared@example.com", "9999"),
      plan: {
        outcome: "merged",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [2],
        insert: { email: "shared@example.com", phoneNumber: "9999", createdAt: NOW },
        members: [
          row(1, "shared@example.com", "1111", null, at(0)),
          row(2, "shared@example.com", "2222", 1, at(1)),
        ],
      },
      insertedId: 3,
      answer: {
        primaryContactId: 1,
        emails: ["shared@example.com"],
        phoneNumbers: ["1111", "2222", "9999"],
        secondaryContactIds: [2, 3],
      },
    },
  ]);
});

describe("planIdentify: rows and requests with one field", () => {
  const emailOnly = row(1, "e1@example.com", null, null, at(0));
  const phoneOnly = row(2, null, "2222", null, at(1));
  runPlanCases([
    {
      name: "swapped pair (e1, p2) of a customer holding (e1, p1) and (e2, p2) writes nothing",
      rows: [
        row(1, "e1@example.com", "1111", null, at(0)),
        row(2, "e2@example.com", "2222", 1, at(1)),
      ],
      request: request("e1@example.com", "2222"),
      plan: {
        outcome: "unchanged",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [],
        insert: null,
        members: [
          row(1, "e1@example.com", "1111", null, at(0)),
          row(2, "e2@example.com", "2222", 1, at(1)),
        ],
      },
      answer: {
        primaryContactId: 1,
        emails: ["e1@example.com", "e2@example.com"],
        phoneNumbers: ["1111", "2222"],
        secondaryContactIds: [2],
      },
    },
    {
      name: "swapped pair (e2, p1) of a customer holding (e1, p1) and (e2, p2) writes nothing",
      rows: [
        row(1, "e1@example.com", "1111", null, at(0)),
        row(2, "e2@example.com", "2222", 1, at(1)),
      ],
      request: request("e2@example.com", "1111"),
      plan: {
        outcome: "unchanged",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [],
        insert: null,
        members: [
          row(1, "e1@example.com", "1111", null, at(0)),
          row(2, "e2@example.com", "2222", 1, at(1)),
        ],
      },
      answer: {
        primaryContactId: 1,
        emails: ["e1@example.com", "e2@example.com"],
        phoneNumbers: ["1111", "2222"],
        secondaryContactIds: [2],
      },
    },
    {
      name: "a phone-only request does not match an email-only row through their null phones",
      rows: [emailOnly, phoneOnly],
      request: request(null, "2222"),
      plan: {
        outcome: "unchanged",
        winnerId: 2,
        promotedFrom: null,
        relinkGroups: [],
        insert: null,
        members: [phoneOnly],
      },
      answer: {
        primaryContactId: 2,
        emails: [],
        phoneNumbers: ["2222"],
        secondaryContactIds: [],
      },
    },
    {
      name: "an email-only request does not match a phone-only row through their null emails",
      rows: [emailOnly, phoneOnly],
      request: request("e1@example.com", null),
      plan: {
        outcome: "unchanged",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [],
        insert: null,
        members: [emailOnly],
      },
      answer: {
        primaryContactId: 1,
        emails: ["e1@example.com"],
        phoneNumbers: [],
        secondaryContactIds: [],
      },
    },
    {
      name: "a new phone-only request against email-only rows creates a phone-only primary",
      rows: [emailOnly],
      request: request(null, "3333"),
      plan: {
        outcome: "created",
        winnerId: null,
        promotedFrom: null,
        relinkGroups: [],
        insert: { email: null, phoneNumber: "3333", createdAt: NOW },
        members: [],
      },
      insertedId: 3,
      answer: {
        primaryContactId: 3,
        emails: [],
        phoneNumbers: ["3333"],
        secondaryContactIds: [],
      },
    },
    {
      name: "a new email-only request against phone-only rows creates an email-only primary",
      rows: [phoneOnly],
      request: request("new@example.com", null),
      plan: {
        outcome: "created",
        winnerId: null,
        promotedFrom: null,
        relinkGroups: [],
        insert: { email: "new@example.com", phoneNumber: null, createdAt: NOW },
        members: [],
      },
      insertedId: 3,
      answer: {
        primaryContactId: 3,
        emails: ["new@example.com"],
        phoneNumbers: [],
        secondaryContactIds: [],
      },
    },
    {
      name: "an email-only row and a phone-only row are merged by a request carrying both",
      rows: [emailOnly, phoneOnly],
      request: request("e1@example.com", "2222"),
      plan: {
        outcome: "merged",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [2],
        insert: null,
        members: [emailOnly, row(2, null, "2222", 1, at(1))],
      },
      answer: {
        primaryContactId: 1,
        emails: ["e1@example.com"],
        phoneNumbers: ["2222"],
        secondaryContactIds: [2],
      },
    },
    {
      name: "a known email with a new phone adds a secondary to an email-only customer",
      rows: [emailOnly],
      request: request("e1@example.com", "4444"),
      plan: {
        outcome: "secondary_added",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [],
        insert: { email: "e1@example.com", phoneNumber: "4444", createdAt: NOW },
        members: [emailOnly],
      },
      insertedId: 3,
      answer: {
        primaryContactId: 1,
        emails: ["e1@example.com"],
        phoneNumbers: ["4444"],
        secondaryContactIds: [3],
      },
    },
    {
      name: "a phone-only request matching a phone-only secondary finds its customer",
      rows: [emailOnly, row(2, null, "2222", 1, at(1))],
      request: request(null, "2222"),
      plan: {
        outcome: "unchanged",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [],
        insert: null,
        members: [emailOnly, row(2, null, "2222", 1, at(1))],
      },
      answer: {
        primaryContactId: 1,
        emails: ["e1@example.com"],
        phoneNumbers: ["2222"],
        secondaryContactIds: [2],
      },
    },
  ]);
});

describe("planIdentify: createdAt of the inserted row", () => {
  const future = NOW + 5_000;
  runPlanCases([
    {
      name: "is the newest member's createdAt when that is after now",
      rows: [
        row(1, "e1@example.com", "1111", null, at(0)),
        row(2, "e2@example.com", "1111", 1, future),
      ],
      request: request("e3@example.com", "1111"),
      plan: {
        outcome: "secondary_added",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [],
        insert: { email: "e3@example.com", phoneNumber: "1111", createdAt: future },
        members: [
          row(1, "e1@example.com", "1111", null, at(0)),
          row(2, "e2@example.com", "1111", 1, future),
        ],
      },
      insertedId: 3,
      answer: {
        primaryContactId: 1,
        emails: ["e1@example.com", "e2@example.com", "e3@example.com"],
        phoneNumbers: ["1111"],
        secondaryContactIds: [2, 3],
      },
    },
    {
      name: "ignores a future row of a customer that is not matched",
      rows: [
        row(1, "e1@example.com", "1111", null, at(0)),
        row(2, "x@example.com", "2222", null, future),
      ],
      request: request("e1@example.com", "3333"),
      plan: {
        outcome: "secondary_added",
        winnerId: 1,
        promotedFrom: null,
        relinkGroups: [],
        insert: { email: "e1@example.com", phoneNumber: "3333", createdAt: NOW },
        members: [row(1, "e1@example.com", "1111", null, at(0))],
      },
      insertedId: 3,
      answer: {
        primaryContactId: 1,
        emails: ["e1@example.com"],
        phoneNumbers: ["1111", "3333"],
        secondaryContactIds: [3],
      },
    },
  ]);
});

describe("planIdentify: customers whose primary is soft-deleted", () => {
  // Primary 1 is soft-deleted: only its secondaries are live and still point at it.
  runPlanCases([
    {
      name: "the oldest live row (not the lowest id) is promoted; the old group is relinked",
      rows: [
        row(3, "e3@example.com", "3333", 1, at(2)),
        row(4, "e4@example.com", "4444", 1, at(1)),
        row(2, "e2@example.com", "2222", null, at(3)),
      ],
      request: request("e3@example.com", "2222"),
      plan: {
        outcome: "merged",
        winnerId: 4,
        promotedFrom: 1,
        relinkGroups: [1, 2],
        insert: null,
        members: [
          row(2, "e2@example.com", "2222", 4, at(3)),
          row(3, "e3@example.com", "3333", 4, at(2)),
          row(4, "e4@example.com", "4444", null, at(1)),
        ],
      },
      answer: {
        primaryContactId: 4,
        emails: ["e4@example.com", "e3@example.com", "e2@example.com"],
        phoneNumbers: ["4444", "3333", "2222"],
        secondaryContactIds: [3, 2],
      },
    },
    {
      name: "an older live primary wins over the stand-in, which is relinked, not promoted",
      rows: [
        row(5, "e5@example.com", "5555", 1, at(5)),
        row(2, "e2@example.com", "2222", null, at(1)),
      ],
      request: request("e5@example.com", "2222"),
      plan: {
        outcome: "merged",
        winnerId: 2,
        promotedFrom: null,
        relinkGroups: [1],
        insert: null,
        members: [
          row(2, "e2@example.com", "2222", null, at(1)),
          row(5, "e5@example.com", "5555", 2, at(5)),
        ],
      },
      answer: {
        primaryContactId: 2,
        emails: ["e2@example.com", "e5@example.com"],
        phoneNumbers: ["2222", "5555"],
        secondaryContactIds: [5],
      },
    },
    {
      name: "a request known to the orphaned customer still promotes its root (merged, no insert)",
      rows: [
        row(2, "e2@example.com", "2222", 1, at(1)),
        row(3, "e3@example.com", "3333", 1, at(2)),
      ],
      request: request("e2@example.com", "2222"),
      plan: {
        outcome: "merged",
        winnerId: 2,
        promotedFrom: 1,
        relinkGroups: [1],
        insert: null,
        members: [
          row(2, "e2@example.com", "2222", null, at(1)),
          row(3, "e3@example.com", "3333", 2, at(2)),
        ],
      },
      answer: {
        primaryContactId: 2,
        emails: ["e2@example.com", "e3@example.com"],
        phoneNumbers: ["2222", "3333"],
        secondaryContactIds: [3],
      },
    },
    {
      name: "a promotion can come with an insert when the request brings a new phone",
      rows: [
        row(2, "e2@example.com", "2222", 1, at(1)),
        row(3, "e3@example.com", "3333", 1, at(2)),
      ],
      request: request("e3@example.com", "9999"),
      plan: {
        outcome: "merged",
        winnerId: 2,
        promotedFrom: 1,
        relinkGroups: [1],
        insert: { email: "e3@example.com", phoneNumber: "9999", createdAt: NOW },
        members: [
          row(2, "e2@example.com", "2222", null, at(1)),
          row(3, "e3@example.com", "3333", 2, at(2)),
        ],
      },
      insertedId: 4,
      answer: {
        primaryContactId: 2,
        emails: ["e2@example.com", "e3@example.com"],
        phoneNumbers: ["2222", "3333", "9999"],
        secondaryContactIds: [3, 4],
      },
    },
  ]);
});

describe("matchedGroups", () => {
  const rows = [
    row(7, "seven@example.com", "7777", null, at(0)),
    row(3, "three@example.com", "3333", null, at(1)),
    row(4, "four@example.com", "7777", 3, at(2)),
    row(6, "six@example.com", "6666", 5, at(3)),
    row(8, null, null, null, at(4)),
  ];
  const cases: readonly {
    name: string;
    request: IdentifyRequest;
    expected: number[];
  }[] = [
    {
      name: "returns each matched primary once, ascending",
      request: request("three@example.com", "7777"),
      expected: [3, 7],
    },
    {
      name: "maps a matched secondary to its primary id",
      request: request("four@example.com", null),
      expected: [3],
    },
    {
      name: "maps a secondary to its primary id even when the primary row is absent",
      request: request(null, "6666"),
      expected: [5],
    },
    {
      name: "never matches a null field of the request to a null field of a row",
      request: request(null, "0000"),
      expected: [],
    },
    {
      name: "returns nothing when no row shares the email or phone",
      request: request("nobody@example.com", "0000"),
      expected: [],
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      assert.deepEqual(matchedGroups(c.request, rows), c.expected);
      assert.deepEqual(matchedGroups(c.request, [...rows].reverse()), c.expected);
    });
  }
});

describe("consolidate", () => {
  const cases: readonly {
    name: string;
    primaryId: number;
    rows: readonly Contact[];
    expected: Customer;
  }[] = [
    {
      name: "lists the primary's email and phone first even when it is not the oldest row",
      primaryId: 10,
      rows: [
        row(11, "older@example.com", "1111", 10, at(1)),
        row(10, "primary@example.com", "1010", null, at(5)),
        row(12, "newer@example.com", "1212", 10, at(7)),
      ],
      expected: {
        primaryContactId: 10,
        emails: ["primary@example.com", "older@example.com", "newer@example.com"],
        phoneNumbers: ["1010", "1111", "1212"],
        secondaryContactIds: [11, 12],
      },
    },
    {
      name: "drops duplicate and null emails and phones",
      primaryId: 1,
      rows: [
        row(1, null, "1111", null, at(0)),
        row(2, "b@example.com", null, 1, at(1)),
        row(3, "b@example.com", "1111", 1, at(2)),
        row(4, "a@example.com", "2222", 1, at(3)),
        row(5, null, null, 1, at(4)),
      ],
      expected: {
        primaryContactId: 1,
        emails: ["b@example.com", "a@example.com"],
        phoneNumbers: ["1111", "2222"],
        secondaryContactIds: [2, 3, 4, 5],
      },
    },
    {
      name: "orders secondaries by createdAt, then by id",
      primaryId: 1,
      rows: [
        row(6, "f@example.com", null, 1, at(2)),
        row(4, "d@example.com", null, 1, at(3)),
        row(5, "e@example.com", null, 1, at(2)),
        row(1, "a@example.com", null, null, at(0)),
        row(9, "i@example.com", null, 1, at(1)),
      ],
      expected: {
        primaryContactId: 1,
        emails: [
          "a@example.com",
          "i@example.com",
          "e@example.com",
          "f@example.com",
          "d@example.com",
        ],
        phoneNumbers: [],
        secondaryContactIds: [9, 5, 6, 4],
      },
    },
    {
      name: "answers a lone primary with no secondaries",
      primaryId: 3,
      rows: [row(3, "solo@example.com", "3333", null, at(0))],
      expected: {
        primaryContactId: 3,
        emails: ["solo@example.com"],
        phoneNumbers: ["3333"],
        secondaryContactIds: [],
      },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      assert.deepEqual(consolidate(c.primaryId, c.rows), c.expected);
      assert.deepEqual(consolidate(c.primaryId, [...c.rows].reverse()), c.expected);
    });
  }
});
