import type { Customer, IdentifyRequest } from "../domain/contact.js";
import { matchedGroups, consolidate, planIdentify } from "../domain/reconcile.js";
import type { IdentifyOutcome } from "../domain/reconcile.js";
import { RetryTransactionError } from "./contact-store.js";
import type { ContactStore } from "./contact-store.js";

export interface IdentifyResult {
  readonly customer: Customer;
  readonly outcome: IdentifyOutcome;
}

/** Rounds of "lock the customers seen, read again" before the transaction starts over. */
const MAX_LOCK_ROUNDS = 6;

/** The lock keys of a request's identifiers; equal identifiers give equal keys. */
export function identifierKeys(request: IdentifyRequest): string[] {
  const keys: string[] = [];
  if (request.email !== null) {
    keys.push(`email:${request.email}`);
  }
  if (request.phoneNumber !== null) {
    keys.push(`phone:${request.phoneNumber}`);
  }
  return keys;
}

/**
 * Reconciles identify requests against the Contact table, one transaction each.
 *
 * A request that changes nothing (its email and phone are already in one customer) is answered
 * from one read. Anything else runs in a locked transaction: the request's identifiers are locked
 * first, so no concurrent request can add a row with them; then the primaries of the customers
 * they match are locked, and the customers are read again until every customer seen is locked.
 * From then on nobody else can change those customers, so the plan is computed on a stable state.
 */
export class IdentifyService {
  constructor(
    private readonly store: ContactStore,
    private readonly clock: () => number = Date.now,
  ) {}

  async identify(request: IdentifyRequest): Promise<IdentifyResult> {
    const snapshot = await this.store.findCustomers(request);
    const readOnly = planIdentify(request, snapshot, this.clock());
    if (readOnly.outcome === "unchanged" && readOnly.winnerId !== null) {
      return { customer: consolidate(readOnly.winnerId, readOnly.members), outcome: "unchanged" };
    }

    return this.store.withLockedTransaction(identifierKeys(request), async (tx) => {
      const locked = new Set<number>();
      let rows = snapshot;
      for (let round = 0; ; round++) {
        const unlocked = matchedGroups(request, rows).filter((id) => !locked.has(id));
        if (round > 0 && unlocked.length === 0) {
          break;
        }
        if (round >= MAX_LOCK_ROUNDS) {
          throw new RetryTransactionError("customers kept changing while being locked");
        }
        for (const primaryId of unlocked) {
          await tx.lockCustomer(primaryId);
          locked.add(primaryId);
        }
        rows = await tx.findCustomers(request);
      }

      const now = this.clock();
      const plan = planIdentify(request, rows, now);
      const inserted = await tx.apply(plan, now);
      const primaryId = plan.winnerId ?? inserted?.id;
      if (primaryId === undefined) {
        throw new Error("unreachable: a plan without a winner inserts a primary");
      }
      const members = inserted === null ? plan.members : [...plan.members, inserted];
      return { customer: consolidate(primaryId, members), outcome: plan.outcome };
    });
  }
}
