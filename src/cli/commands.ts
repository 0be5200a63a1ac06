import { rootMessage } from "../error-message.js";
import { existsSync } from "node:fs";
import { parseArgs } from "node:util";
import type { ParseArgsConfig } from "node:util";
import { ConfigError, loadConfig } from "../config.js";
import type { Config } from "../config.js";
import type { Contact, IdentifyRequest } from "../domain/contact.js";
import { InvalidInputError } from "../domain/errors.js";
import { normalizeEmail, normalizePhoneNumber } from "../domain/identify-input.js";
import { consolidate, planIdentify } from "../domain/reconcile.js";
import { SqlContactStore } from "../storage/contact.store.js";
import { openDatabase } from "../storage/database.js";
import type { Database } from "../storage/database.js";
import { migrateToLatest, pendingMigrations } from "../storage/migrate.js";
import { readMergeHistory } from "../storage/merge-log.repository.js";
import { readContactStats } from "../storage/stats.repository.js";

export const EXIT_OK = 0;
/** A runtime failure, or nothing found. */
export const EXIT_FAILURE = 1;
/** A bad command line: unknown command or option, a missing or doubled option, a bad value. */
export const EXIT_USAGE = 2;

/** Where a command writes: process.stdout/stderr in the CLI, collectors in tests. */
export interface Output {
  write(text: string): unknown;
}

/** What a command runs with: the environment it configures itself from, and its outputs. */
export interface CliContext {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly stdout: Output;
  readonly stderr: Output;
}

export const USAGE = `Usage: identity <command> [options]

Commands:
  serve                 Start the HTTP server, as npm start does.
  migrate               Bring the database schema up to date.
  lookup --email EMAIL  Print the customer that has this email, as JSON. Reads only.
  lookup --phone PHONE  Print the customer that has this phone number, as JSON. Reads only.
  merges --email EMAIL  Print, oldest first, the merges that made the customer holding this
                        email (bridges and promotions, with those of the customers it
                        absorbed), each with its request's email and phone, as one line of
                        JSON {"primaryContactId":id,"merges":[...]}. Reads only.
  merges --phone PHONE  The same by phone number.
  stats                 Print the numbers of live contacts and customers and the largest
                        customer, as JSON. Reads only.
  help                  Print this help.

Options:
  --email EMAIL         lookup, merges: the email, normalized as POST /identify does.
  --phone PHONE         lookup, merges: the phone number, normalized as POST /identify does.
  -h, --help            Print this help.

Configuration comes from the environment, as for the server: DATABASE_URL (default
sqlite:./data/contacts.db) and the other variables listed in the README.

Exit codes: 0 success; 1 failure, or no customer found; 2 bad command line.
`;

/** A bad command line; exits with EXIT_USAGE. */
class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** A failure already phrased as the one line to print; exits with EXIT_FAILURE. */
class CommandError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CommandError";
  }
}

/** Turns any error into its lines on stderr and an exit code; never prints a stack. */
function report(ctx: CliContext, error: unknown): number {
  if (error instanceof UsageError) {
    ctx.stderr.write(`identity: ${error.message} (see identity --help)\n`);
    return EXIT_USAGE;
  }
  if (error instanceof ConfigError) {
    for (const problem of error.problems) {
      ctx.stderr.write(`configuration error: ${problem}\n`);
    }
    return EXIT_FAILURE;
  }
  const line = error instanceof CommandError ? error.message : `identity: ${rootMessage(error)}`;
  ctx.stderr.write(`${line}\n`);
  return EXIT_FAILURE;
}

async function guarded(ctx: CliContext, command: () => Promise<number>): Promise<number> {
  try {
    return await command();
  } catch (error) {
    return report(ctx, error);
  }
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** Strict parsing: no positionals, no unknown options; `--help` is accepted everywhere. */
function parseOptions<T extends Options>(command: string, args: readonly string[], options: T) {
  try {
    return parseArgs({
      args: [...args],
      options: { ...options, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_") && error instanceof Error) {
      throw new UsageError(`${command}: ${error.message.replace(/\s*\n\s*/g, " ")}`);
    }
    throw error;
  }
}

function database(config: Config, readOnly = false): Database {
  return openDatabase(config.database, {
    poolSize: 1,
    lockTimeoutMs: config.databaseLockTimeoutMs,
    sqliteSynchronous: config.sqliteSynchronous,
    readOnly,
  });
}

/**
 * Opens the configured database for reading. A missing SQLite file is an error rather than a new
 * empty database: reading must not create anything.
 */
function openExisting(config: Config): Database {
  const target = config.database;
  if (target.dialect === "sqlite" && target.path !== ":memory:" && !existsSync(target.path)) {
    throw new CommandError(
      `DATABASE_URL: sqlite:${target.path} does not exist (identity migrate creates it)`,
    );
  }
  return database(config, true);
}

/** Runs `read` on an open database, phrasing a failure (an unmigrated schema included) as a line. */
async function reading<T>(opened: Database, read: (db: Database) => Promise<T>): Promise<T> {
  try {
    return await read(opened);
  } catch (error) {
    const pending = await pendingMigrations(opened).catch(() => []);
    const reason =
      pending.length > 0
        ? `the schema is not migrated (pending: ${pending.join(", ")}); run identity migrate`
        : rootMessage(error);
    throw new CommandError(`DATABASE_URL: cannot read ${opened.description}: ${reason}`, {
      cause: error,
    });
  } finally {
    await opened.destroy();
  }
}

/** `identity migrate` (and `npm run migrate`): brings the schema up to date and says what it did. */
export function runMigrate(ctx: CliContext): Promise<number> {
  return guarded(ctx, async () => {
    const opened = database(loadConfig(ctx.env));
    try {
      let newer: string[] = [];
      const applied = await migrateToLatest(opened, (names) => {
        newer = names;
      });
      ctx.stdout.write(
        newer.length > 0
          ? `${opened.description}: schema is newer than this build (${newer.join(", ")}): nothing to apply\n`
          : applied.length === 0
            ? `${opened.description}: schema is up to date\n`
            : `${opened.description}: applied ${applied.join(", ")}\n`,
      );
      return EXIT_OK;
    } catch (error) {
      throw new CommandError(
        `DATABASE_URL: cannot migrate ${opened.description}: ${rootMessage(error)}`,
        { cause: error },
      );
    } finally {
      await opened.destroy();
    }
  });
}

type IdentifierCommand = "lookup" | "merges";

function single(
  command: IdentifierCommand,
  values: string[] | undefined,
  option: string,
): string | undefined {
  if (values !== undefined && values.length > 1) {
    throw new UsageError(`${command}: ${option} is given more than once`);
  }
  return values?.[0];
}

function normalized(
  command: IdentifierCommand,
  option: string,
  value: string,
  normalize: (v: string) => string | null,
) {
  let result: string | null;
  try {
    result = normalize(value);
  } catch (error) {
    if (error instanceof InvalidInputError) {
      throw new UsageError(`${command}: invalid ${option}: ${error.reason}`);
    }
    throw error;
  }
  if (result === null) {
    throw new UsageError(`${command}: ${option} needs a value`);
  }
  return result;
}

/** The one identifier (`--email` or `--phone`) a lookup or merges command line names. */
function identifierRequest(
  command: IdentifierCommand,
  args: readonly string[],
): IdentifyRequest | "help" {
  const values = parseOptions(command, args, {
    email: { type: "string", multiple: true },
    phone: { type: "string", multiple: true },
  });
  if (values.help === true) {
    return "help";
  }
  const email = single(command, values.email, "--email");
  const phone = single(command, values.phone, "--phone");
  if (email !== undefined && phone !== undefined) {
    throw new UsageError(`${command} takes --email or --phone, not both`);
  }
  if (email !== undefined) {
    return { email: normalized(command, "--email", email, normalizeEmail), phoneNumber: null };
  }
  if (phone !== undefined) {
    return {
      email: null,
      phoneNumber: normalized(command, "--phone", phone, normalizePhoneNumber),
    };
  }
  throw new UsageError(`${command} needs --email EMAIL or --phone PHONE`);
}

/**
 * A customer as the CLI finds it: its primary id, its live rows, and its groups (the primary;
 * also the soft-deleted primary a stand-in will replace).
 */
interface FoundCustomer {
  readonly primaryId: number;
  readonly members: readonly Contact[];
  readonly groups: readonly number[];
}

/** The customer of the request's one identifier, or null. */
async function customerOf(db: Database, request: IdentifyRequest): Promise<FoundCustomer | null> {
  const rows = await new SqlContactStore(db).findCustomers(request);
  // The plan of the request is what the service answers with; nothing of it is written here.
  const plan = planIdentify(request, rows, Date.now());
  return plan.winnerId === null
    ? null
    : {
        primaryId: plan.winnerId,
        members: plan.members,
        groups: [plan.winnerId, ...plan.relinkGroups],
      };
}

function notFound(ctx: CliContext, request: IdentifyRequest): number {
  ctx.stderr.write(`no customer has that ${request.email !== null ? "email" : "phone number"}\n`);
  return EXIT_FAILURE;
}

/**
 * Runs a command about the customer of one identifier (`lookup`, `merges`): parses its command
 * line, reads that customer, and prints what `describe` makes of it as one line of JSON, all
 * without writing, locking or migrating anything. No customer: one line on stderr, exit 1.
 */
function runForCustomer(
  command: IdentifierCommand,
  args: readonly string[],
  ctx: CliContext,
  describe: (db: Database, customer: FoundCustomer) => unknown,
): Promise<number> {
  return guarded(ctx, async () => {
    const request = identifierRequest(command, args);
    if (request === "help") {
      ctx.stdout.write(USAGE);
      return EXIT_OK;
    }
    const opened = openExisting(loadConfig(ctx.env));
    const found = await reading(opened, async (db) => {
      const customer = await customerOf(db, request);
      return customer === null ? null : { answer: await describe(db, customer) };
    });
    if (found === null) {
      return notFound(ctx, request);
    }
    ctx.stdout.write(`${JSON.stringify(found.answer)}\n`);
    return EXIT_OK;
  });
}

/**
 * `identity lookup --email X | --phone Y`: prints the customer POST /identify would answer with for
 * that identifier alone.
 */
export function runLookup(args: readonly string[], ctx: CliContext): Promise<number> {
  return runForCustomer("lookup", args, ctx, (_db, customer) =>
    consolidate(customer.primaryId, customer.members),
  );
}

/**
 * `identity merges --email X | --phone Y`: why the customer of that identifier is one customer:
 * every logged merge that went into it, in order, with the identifiers of the request that made
 * each.
 */
export function runMerges(args: readonly string[], ctx: CliContext): Promise<number> {
  return runForCustomer("merges", args, ctx, async (db, customer) => ({
    primaryContactId: customer.primaryId,
    merges: await readMergeHistory(db.db, customer.groups),
  }));
}

/** `identity stats`: live contacts, customers and the largest customer, as one line of JSON. */
export function runStats(args: readonly string[], ctx: CliContext): Promise<number> {
  return guarded(ctx, async () => {
    if (parseOptions("stats", args, {}).help === true) {
      ctx.stdout.write(USAGE);
      return EXIT_OK;
    }
    const opened = openExisting(loadConfig(ctx.env));
    const stats = await reading(opened, (db) => readContactStats(db.db));
    ctx.stdout.write(`${JSON.stringify(stats)}\n`);
    return EXIT_OK;
  });
}

/**
 * Runs one `identity` command line (argv without the node and script paths) and returns its exit
 * code. `serve` is injected: it starts the server, which reads its own configuration.
 */
export function runCli(
  argv: readonly string[],
  ctx: CliContext,
  serve: () => Promise<void>,
): Promise<number> {
  const [command, ...args] = argv;
  switch (command) {
    case undefined:
    case "help":
    case "--help":
    case "-h":
      ctx.stdout.write(USAGE);
      return Promise.resolve(EXIT_OK);
    case "serve":
    case "migrate":
      return guarded(ctx, async () => {
        if (parseOptions(command, args, {}).help === true) {
          ctx.stdout.write(USAGE);
          return EXIT_OK;
        }
        if (command === "migrate") {
          return runMigrate(ctx);
        }
        await serve();
        return EXIT_OK;
      });
    case "lookup":
      return runLookup(args, ctx);
    case "merges":
      return runMerges(args, ctx);
    case "stats":
      return runStats(args, ctx);
    default:
      return Promise.resolve(
        report(
          ctx,
          new UsageError(
            command.startsWith("-")
              ? `unknown option '${command}'`
              : `unknown command '${command}'`,
          ),
        ),
      );
  }
}
