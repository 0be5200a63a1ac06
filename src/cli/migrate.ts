import { ConfigError, loadConfig } from "../config.js";
import { openDatabase } from "../storage/database.js";
import { migrateToLatest } from "../storage/migrate.js";

/** `npm run migrate`: brings the configured database's schema up to date, then exits. */
async function main(): Promise<void> {
  const config = loadConfig(process.env);
  const database = openDatabase(config.database, {
    poolSize: 1,
    lockTimeoutMs: config.databaseLockTimeoutMs,
  });
  try {
    const applied = await migrateToLatest(database);
    process.stdout.write(
      applied.length === 0
        ? `${database.description}: schema is up to date\n`
        : `${database.description}: applied ${applied.join(", ")}\n`,
    );
  } catch (error) {
    throw new Error(
      `DATABASE_URL: cannot migrate ${database.description}: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  } finally {
    await database.destroy();
  }
}

main().catch((error: unknown) => {
  const lines =
    error instanceof ConfigError
      ? error.problems
      : [error instanceof Error ? error.message : String(error)];
  for (const line of lines) {
    process.stderr.write(`${line}\n`);
  }
  process.exitCode = 1;
});
