/**
 * The innermost cause of an error as one line, the driver's code first when it has one
 * (`ECONNREFUSED connect ECONNREFUSED 127.0.0.1:1`). For logs and start-up errors, never for
 * clients.
 */
export function rootMessage(error: unknown): string {
  let current: unknown = error;
  while (current instanceof Error && current.cause !== undefined) {
    current = current.cause;
  }
  if (current instanceof AggregateError && current.errors.length > 0) {
    current = current.errors[0];
  }
  if (current instanceof Error) {
    const code = (current as { code?: unknown }).code;
    const message = current.message.replace(/\s*\n\s*/g, " ");
    return typeof code === "string" && !message.includes(code)
      ? `${code} ${message}`
      : message || current.name;
  }
  return String(current);
}
