/** The benchmark's population and request mix, generated client-side from a seed. */
import { seededRandom } from "../test/support/invariants.js";

export interface Body {
  email?: string;
  phoneNumber?: string;
}

interface Person {
  readonly emails: string[];
  readonly phones: string[];
  /** The person this one was merged into by a bridge (its identifiers went there). */
  into?: Person;
}

/** Shares of each kind of request; they add up to 1. */
export interface Mix {
  readonly repeat: number;
  readonly newInfo: number;
  readonly newCustomer: number;
  readonly bridge: number;
}

/** The mix of the issue: 85% repeats, 10% new information, 4% new customers, 1% bridges. */
export const MIX: Mix = { repeat: 0.85, newInfo: 0.1, newCustomer: 0.04, bridge: 0.01 };

/** A mix from percentages "repeat,newInfo,newCustomer,bridge" (such as "85,10,4,1"). */
export function parseMix(text: string): Mix {
  const parts = text.split(",").map(Number);
  const [repeat, newInfo, newCustomer, bridge] = parts;
  if (
    parts.length !== 4 ||
    repeat === undefined ||
    newInfo === undefined ||
    newCustomer === undefined ||
    bridge === undefined ||
    parts.some((n) => !Number.isFinite(n) || n < 0) ||
    Math.abs(repeat + newInfo + newCustomer + bridge - 100) > 1e-9
  ) {
    throw new Error(`--mix wants four percentages adding up to 100, such as 85,10,4,1: ${text}`);
  }
  return {
    repeat: repeat / 100,
    newInfo: newInfo / 100,
    newCustomer: newCustomer / 100,
    bridge: bridge / 100,
  };
}

export class Workload {
  private readonly people: Person[] = [];
  private readonly random: () => number;
  private fresh = 0;

  constructor(
    private readonly tag: string,
    seed: number,
    private readonly mix: Mix = MIX,
  ) {
    this.random = seededRandom(seed);
  }

  private pick<T>(items: readonly T[]): T {
    const item = items[Math.floor(this.random() * items.length)];
    if (item === undefined) {
      throw new Error("empty list");
    }
    return item;
  }

  private newEmail(): string {
    return `c${++this.fresh}@${this.tag}.test`;
  }

  private newPhone(): string {
    return `+1${String(2_000_000_000 + ++this.fresh)}`;
  }

  /**
   * Adds `count` customers with 1–3 emails and 1–2 phones each; returns, per customer, the
   * requests that create it through the API, in order.
   */
  populate(count: number): Body[][] {
    const plans: Body[][] = [];
    for (let i = 0; i < count; i++) {
      const person: Person = {
        emails: Array.from({ length: 1 + Math.floor(this.random() * 3) }, () => this.newEmail()),
        phones: Array.from({ length: 1 + Math.floor(this.random() * 2) }, () => this.newPhone()),
      };
      this.people.push(person);
      const [email, ...emails] = person.emails;
      const [phone, ...phones] = person.phones;
      plans.push([
        { email, phoneNumber: phone },
        ...emails.map((e) => ({ email: e, phoneNumber: phone })),
        ...phones.map((p) => ({ email, phoneNumber: p })),
      ]);
    }
    return plans;
  }

  /** The customers as rows to bulk-load: per customer, its [email, phone] pairs, primary first. */
  customers(): readonly Person[] {
    return this.people;
  }

  /** A person picked at random, as the customer it belongs to now (after the bridges). */
  private pickCustomer(): Person {
    let person = this.pick(this.people);
    while (person.into !== undefined) {
      person = person.into;
    }
    return person;
  }

  /** The next request of the mix. */
  next(): Body {
    const roll = this.random();
    const mix = this.mix;
    if (roll < mix.repeat) {
      const person = this.pickCustomer();
      const shape = this.random();
      if (shape < 0.6) {
        return { email: this.pick(person.emails), phoneNumber: this.pick(person.phones) };
      }
      return shape < 0.8
        ? { email: this.pick(person.emails) }
        : { phoneNumber: this.pick(person.phones) };
    }
    if (roll < mix.repeat + mix.newInfo) {
      const person = this.pickCustomer();
      if (this.random() < 0.5) {
        const phoneNumber = this.newPhone();
        const email = this.pick(person.emails);
        person.phones.push(phoneNumber);
        return { email, phoneNumber };
      }
      const email = this.newEmail();
      const phoneNumber = this.pick(person.phones);
      person.emails.push(email);
      return { email, phoneNumber };
    }
    if (roll < mix.repeat + mix.newInfo + mix.newCustomer) {
      const person = { emails: [this.newEmail()], phones: [this.newPhone()] };
      this.people.push(person);
      return { email: person.emails[0], phoneNumber: person.phones[0] };
    }
    const a = this.pickCustomer();
    const b = this.pickCustomer();
    const body = { email: this.pick(a.emails), phoneNumber: this.pick(b.phones) };
    if (a !== b) {
      // One customer now: b's identifiers join a's, and b's people answer as a from now on
      // (sharing b's arrays instead would push an array into itself at the next bridge of two
      // people already merged, doubling it each time).
      a.emails.push(...b.emails);
      a.phones.push(...b.phones);
      b.into = a;
    }
    return body;
  }
}
