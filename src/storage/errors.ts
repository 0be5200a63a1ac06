export type StorageErrorCode = "DATABASE_FAILURE";

/**
 * The database could not do what was asked (unreachable, timed out, a constraint, a driver
 * error). `cause` carries the driver's error for the log; it is never shown to a client.
 */
export class DatabaseError extends Error {
  readonly code = "DATABASE_FAILURE" satisfies StorageErrorCode;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DatabaseError";
  }
}

/** `error` as a DatabaseError saying what was being done (unchanged if it already is one). */
export function asDatabaseError(error: unknown, doing: string): DatabaseError {
  if (error instanceof DatabaseError) {
    return error;
  }
  const detail = error instanceof Error ? error.message : String(error);
  return new DatabaseError(`${doing}: ${detail}`, { cause: error });
}

/** SQLite's SQLITE_BUSY (and its extended codes): another connection holds the lock asked for. */
export function isSqliteBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("SQLITE_BUSY");
}
