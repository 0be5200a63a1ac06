/** The work did not settle within the deadline. */
export class HandlerTimeoutError extends Error {
  readonly code = "HANDLER_TIMEOUT";
  constructor(timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms`);
    this.name = "HandlerTimeoutError";
  }
}

/** A request in flight, in a doubly linked list in the order the requests came. */
interface InFlight {
  readonly deadline: number;
  readonly reject: (error: Error) => void;
  prev: InFlight | null;
  next: InFlight | null;
}

/**
 * One deadline, the same for every request of a route: `within(work)` rejects with
 * HandlerTimeoutError once `timeoutMs` have passed and `work` has not settled (the work itself
 * goes on). One interval sweeps the requests in flight, where a timer per request (set, then
 * cleared, thousands of times a second) cost about 3% of a repeat's CPU, and Fastify's own
 * handlerTimeout (an AbortController and a DOMException per request) about a tenth of the
 * throughput. The answer comes up to a tenth of the timeout (at most 250 ms) late, more if the
 * event loop is held up. The interval runs only while requests are in flight and never keeps the
 * process alive.
 *
 * The requests in flight are a linked list, each unlinked as it settles. A Set, with an add and a
 * delete per request, cost 25–30 MB more RSS under load (its table, rebuilt again and again,
 * went to the old generation); an array swept every 250 ms kept the settled answers that long,
 * with the same effect.
 */
export class Deadlines {
  private head: InFlight | null = null;
  private tail: InFlight | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly sweepMs: number;

  /**
   * `now`: a clock that only moves forward, in milliseconds (by default `performance.now`; the
   * wall clock may jump). With one timeout for all, the list is then in deadline order.
   */
  constructor(
    private readonly timeoutMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.sweepMs = Math.max(5, Math.min(250, Math.floor(timeoutMs / 10)));
  }

  /** True while the interval runs: while requests are in flight, and up to one sweep after. */
  get sweeping(): boolean {
    return this.timer !== null;
  }

  /** The requests in flight (counted along the list: for tests and diagnostics). */
  get size(): number {
    let count = 0;
    for (let entry = this.head; entry !== null; entry = entry.next) {
      count++;
    }
    return count;
  }

  within<T>(work: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const entry: InFlight = {
        deadline: this.now() + this.timeoutMs,
        reject,
        prev: this.tail,
        next: null,
      };
      if (this.tail === null) {
        this.head = entry;
      } else {
        this.tail.next = entry;
      }
      this.tail = entry;
      this.timer ??= setInterval(() => {
        this.sweep();
      }, this.sweepMs).unref();
      // The handlers never throw, so the promise they return always fulfills.
      void work.then(resolve, reject).then(() => {
        this.unlink(entry);
      });
    });
  }

  /** Takes the entry out of the list; nothing if it is out already (swept, then settled). */
  private unlink(entry: InFlight): void {
    if (entry.prev === null && this.head !== entry) {
      return;
    }
    if (entry.prev === null) {
      this.head = entry.next;
    } else {
      entry.prev.next = entry.next;
    }
    if (entry.next === null) {
      this.tail = entry.prev;
    } else {
      entry.next.prev = entry.prev;
    }
    entry.prev = null;
    entry.next = null;
  }

  private sweep(): void {
    const now = this.now();
    // In deadline order: the first one not due ends the sweep.
    while (this.head !== null && this.head.deadline <= now) {
      const entry = this.head;
      this.unlink(entry);
      entry.reject(new HandlerTimeoutError(this.timeoutMs));
    }
    if (this.head === null && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}
