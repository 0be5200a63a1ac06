#!/usr/bin/env node
import { runCli } from "./commands.js";

/** `identity <command>`: the command-line tool; `identity --help` lists the commands. */
process.exitCode = await runCli(
  process.argv.slice(2),
  { env: process.env, stdout: process.stdout, stderr: process.stderr },
  async () => {
    // src/server.ts starts the server (reading process.env itself) when it is imported.
    await import("../server.js");
  },
);
