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
