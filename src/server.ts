import { pino } from "pino";
import { ConfigError, loadConfig } from "./config.js";
import { createDeps } from "./deps.js";
import { buildApp } from "./http/app.js";

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      for (const problem of error.problems) {
        process.stderr.write(`configuration error: ${problem}\n`);
      }
      process.exit(1);
    }
    throw error;
  }
  const logger = pino({ level: config.logLevel });
  const deps = await createDeps(config, logger);
  const app = buildApp({ identify: deps.identify, logger, errorMessages: config.errorMessages });
  app.addHook("onClose", () => deps.close());

  if (config.errorMessages === "transparent") {
    logger.warn(
      "ERROR_MESSAGES=transparent: error answers show their real reason; never in production",
    );
  }
  const shutdown = (signal: string) => {
    logger.info({ signal }, "shutting down");
    app.close().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", shutdown);
  process.once("SIGINT", shutdown);
  await app.listen({ host: config.host, port: config.port });
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
