import { runMigrate } from "./commands.js";

/** `npm run migrate`: brings the configured database's schema up to date, then exits. */
process.exitCode = await runMigrate({
  env: process.env,
  stdout: process.stdout,
  stderr: process.stderr,
});
