import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";
import type { SqliteSession } from "./sqlite-session.js";

export interface CheckpointerOptions {
  /** The database file (not :memory:). */
  readonly path: string;
  readonly synchronous: "full" | "normal";
  /** How often the thread checkpoints what is in the WAL. */
  readonly intervalMs: number;
  /** WAL frames (pages) past which writers pause so that a checkpoint completes and the WAL restarts. */
  readonly restartFrames: number;
  /** Told when the thread fails; the connection then checkpoints by itself again. */
  readonly onError: (error: Error) => void;
}

/**
 * The checkpointer thread. CommonJS, evaluated as a worker: it opens its own connection to the
 * file and runs PASSIVE checkpoints (they never block a writer or a reader). A writer restarts the
 * WAL from its beginning only if its transaction began with every frame checkpointed, which under
 * steady writes never happens (each batch begins after commits the last checkpoint did not see),
 * so the WAL would only grow; past `restartFrames` the thread asks the main thread to pause its
 * writers, checkpoints once more (now to the end), and lets them go: the next writer restarts it.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const Database = require(workerData.driver);
// better-sqlite3's errors reach the main thread as {code} alone (their class does not survive
// the copy between threads): thrown again as plain Errors, with the code in the message.
const plain = (error) =>
  new Error([error?.code, error?.message].filter(Boolean).join(": ") || String(error));
const guarded = (work) => {
  try {
    return work();
  } catch (error) {
    throw plain(error);
  }
};
const db = guarded(() => new Database(workerData.path, { fileMustExist: true }));
guarded(() => db.pragma("synchronous = " + workerData.synchronous));
let waiting = false;
// Checkpoint rounds to skip before the next pause: it grows while pauses do not get the WAL
// restarted (another process on the file keeps writing, or keeps reading at the end of the WAL),
// so that a process does not pause its writers for nothing.
let skip = 0;
let backoff = 0;
// The WAL's frames at the last round, or at the last pause's checkpoint if one came after it.
let lastLog = 0;
let paused = false;
const checkpoint = () => guarded(() => db.pragma("wal_checkpoint(PASSIVE)")[0]);
const timer = setInterval(() => {
  if (waiting) return;
  const { log } = checkpoint();
  if (log < lastLog) {
    // The WAL restarted (after a pause, or by itself while writers were idle).
    backoff = 0;
    skip = 0;
  } else if (paused) {
    backoff = Math.min(Math.max(backoff * 2, 1), 300);
    skip = backoff;
  }
  paused = false;
  lastLog = log;
  if (log >= workerData.restartFrames) {
    if (skip > 0) {
      skip--;
      return;
    }
    waiting = true;
    parentPort.postMessage("pause");
  }
}, workerData.intervalMs);
parentPort.on("message", (message) => {
  if (message === "paused") {
    try {
      lastLog = checkpoint().log;
      paused = true;
    } finally {
      waiting = false;
      parentPort.postMessage("resume");
    }
  } else if (message === "stop") {
    clearInterval(timer);
    db.close();
    parentPort.close();
  }
});
`;

/** The longest writers stay paused for one checkpoint. */
const PAUSE_LIMIT_MS = 1000;

/** A running checkpointer thread; `stop` ends it. */
export interface Checkpointer {
  stop(): Promise<void>;
}

/**
 * Moves SQLite's WAL checkpoints off the event loop. By default the connection that commits runs
 * them, inside COMMIT, every 1,000 pages: a checkpoint copies those pages into the database file
 * and syncs it, which blocked the event loop for about 6 ms each time under load and made up
 * half of all COMMIT time (README, Benchmark). The caller sets the connection's
 * `wal_autocheckpoint` high, as a fallback; this thread does the checkpoints.
 */
export function startCheckpointer(
  session: SqliteSession,
  options: CheckpointerOptions,
): Checkpointer {
  const worker = new Worker(WORKER_SOURCE, {
    eval: true,
    workerData: {
      driver: createRequire(import.meta.url).resolve("better-sqlite3"),
      path: options.path,
      synchronous: options.synchronous,
      intervalMs: options.intervalMs,
      restartFrames: options.restartFrames,
    },
  });
  worker.unref();
  let deadline: NodeJS.Timeout | undefined;
  const resume = () => {
    clearTimeout(deadline);
    worker.unref();
    session.resume();
  };
  worker.on("message", (message: unknown) => {
    if (message === "pause") {
      // Referenced while writers wait on it, so that the process does not end meanwhile.
      worker.ref();
      void session.pause().then(() => {
        // Writers never wait on the thread for long, whatever happens to it.
        deadline = setTimeout(resume, PAUSE_LIMIT_MS);
        worker.postMessage("paused");
      });
    } else if (message === "resume") {
      resume();
    }
  });
  worker.on("error", (error) => {
    resume();
    options.onError(error);
  });
  const exited = new Promise<void>((resolve) =>
    worker.once("exit", () => {
      resume();
      resolve();
    }),
  );
  return {
    stop: async () => {
      // Held until it has closed its connection: an unreferenced thread would let the process
      // end first.
      worker.ref();
      worker.postMessage("stop");
      const timer = setTimeout(() => void worker.terminate(), PAUSE_LIMIT_MS);
      await exited;
      clearTimeout(timer);
      resume();
    },
  };
}
