/** Log levels at which a line is written for every request (the level is checked first). */
export const DEBUG_LEVELS: ReadonlySet<string> = new Set(["debug", "trace"]);
