import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Request } from "autocannon";
import type { Workload } from "./workload.js";

/** The ceiling's server through tsx, from the checkout's root. */
export const CEILING_ENTRY = ["--import", "tsx", "benchmarks/ceiling-server.ts"];

/**
 * What `npm start` runs after `node` (the start script of `root`'s package.json), so that the
 * benchmarks run the server as a user does. Its paths are relative to `root`.
 */
export function startArguments(root: string): string[] {
  const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
    scripts: { start: string };
  };
  const [node, ...rest] = manifest.scripts.start.split(/\s+/);
  if (node !== "node" || rest.some((part) => /["'$&|;<>]/.test(part))) {
    throw new Error(`npm start is not a plain "node ..." command: ${manifest.scripts.start}`);
  }
  return rest;
}

/** autocannon's requests: POST /identify with the workload's next body each time. */
export function identifyRequests(workload: Workload): Request[] {
  return [
    {
      method: "POST",
      headers: { "content-type": "application/json" },
      setupRequest: (request) => ({ ...request, body: JSON.stringify(workload.next()) }),
    },
  ];
}
