/** The work did not settle within the deadline. */
export class HandlerTimeoutError extends Error {
  readonly code = "HANDLER_TIMEOUT";
  constructor(timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms`);
    this.name = "HandlerTimeoutError";
  }
}

interface InFlight {
  readonly deadline: number;
  readonly reject: (error: Error) => void;
  settled: boolean;
}

/**
 * One deadline, the same for every request of a route: `within(work)` rejects with
 * HandlerTimeoutError once `timeoutMs` have passed and `work` has not settled (the work itself
 * goes on). One interval sweeps the requests in flight, where a timer per request (set, then
 * cleared, thousands of times a second) cost about 3% of a repeat's CPU. The answer comes up to
 * a tenth of the timeout (at most 250 ms) late. The interval runs only while requests are in
 * flight and never keeps the process alive.
 */
export class Deadlines {
  private inFlight: InFlight[] = [];
  private timer: NodeJS.Timeout | null = null;
  private readonly sweepMs: number;

  constructor(private readonly timeoutMs: number) {
    this.sweepMs = Math.max(5, Math.min(250, Math.floor(timeoutMs / 10)));
  }

  /** True while the interval runs: while requests are in flight, and up to one sweep after. */
  get sweeping(): boolean {
    return this.timer !== null;
  }

  within<T>(work: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const entry: InFlight = { deadline: Date.now() + this.timeoutMs, reject, settled: false };
      this.inFlight.push(entry);
      this.timer ??= setInterval(() => {
        this.sweep();
      }, this.sweepMs).unref();
      // The handlers never throw, so the promise they return always fulfills.
      void work.then(resolve, reject).then(() => {
        entry.settled = true;
      });
    });
  }

  private sweep(): void {
    const now = Date.now();
    const waiting: InFlight[] = [];
    for (const entry of this.inFlight) {
      if (entry.settled) {
        continue;
      }
      if (entry.deadline <= now) {
        entry.settled = true;
        entry.reject(new HandlerTimeoutError(this.timeoutMs));
      } else {
        waiting.push(entry);
      }
    }
    this.inFlight = waiting;
    if (waiting.length === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}
