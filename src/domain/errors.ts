export type DomainErrorCode = "INVALID_INPUT";

/**
 * A request the service refuses to process. `reason` is for the log (and for
 * ERROR_MESSAGES=transparent); clients see a masked message.
 */
export class InvalidInputError extends Error {
  readonly code = "INVALID_INPUT" satisfies DomainErrorCode;

  constructor(readonly reason: string) {
    super(reason);
    this.name = "InvalidInputError";
  }
}
