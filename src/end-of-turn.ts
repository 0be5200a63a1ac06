let turn: Promise<void> | null = null;

/**
 * Resolves at the end of this turn of the event loop (its check phase; called during the check
 * phase itself, at the next turn's), with one promise for every caller of the turn. Answers that
 * wait for it go out together after the turn's requests were read, rather than one in the middle
 * of each read: the server and its clients then make fewer, fuller exchanges, which cost less CPU
 * per request on a loaded machine (README, Speed decisions). SQLite's batched reads and Redis's
 * pipelined replies already answer that way; the Redis cache's lookups of a turn leave together
 * then, as one script call.
 */
export function endOfTurn(): Promise<void> {
  return (turn ??= new Promise((resolve) => {
    setImmediate(() => {
      turn = null;
      resolve();
    });
  }));
}
