/** Names of the attack signatures the service refuses with 403. */
export type ThreatSignature =
  | "SQL_TAUTOLOGY"
  | "SQL_UNION"
  | "SQL_STACKED_STATEMENT"
  | "SQL_COMMENT"
  | "MARKUP"
  | "TEMPLATE"
  | "OPERATOR"
  | "PROTOTYPE_POLLUTION";

// Every pattern runs in time linear in the value: no run of characters can be split two ways
// between adjacent quantifiers (`\s*\)?\s*` could, and a quote followed by 16 KiB of spaces then
// held the event loop for 0.4 s). Values are also screened only up to MAX_SCREENED_LENGTH.
const VALUE_SIGNATURES: [ThreatSignature, RegExp][] = [
  // ' OR 1=1, " or 'a'='a, ' AND x=x ...: a quote, a boolean operator, a comparison.
  ["SQL_TAUTOLOGY", /['"`]\s*(?:\)\s*)?(or|and|\|\||&&)\s+[\w'"`(]+\s*(=|<|>|like\b|is\b)/i],
  // or 1=1, AND 2>1, or x=x: a boolean operator and a comparison of literals.
  ["SQL_TAUTOLOGY", /\b(or|and)\s+(\d+\s*[=<>]+\s*\d+|(?<word>\w+)\s*=\s*\k<word>\b)/i],
  ["SQL_UNION", /\bunion\b[\s/*]+(all\b[\s/*]+)?select\b/i],
  [
    "SQL_STACKED_STATEMENT",
    /;\s*(select|insert|update|delete|drop|alter|create|truncate|exec|execute|declare|shutdown|grant)\b/i,
  ],
  // -- followed by a space, a quote or the end; /* and */ anywhere.
  ["SQL_COMMENT", /--(\s|$|['"`])|\/\*|\*\//],
  [
    "MARKUP",
    /<\s*(?:\/\s*)?(script|iframe|img|svg|object|embed|style|link|meta)\b|javascript\s*:|\bon[a-z]+\s*=/i,
  ],
  ["TEMPLATE", /\{\{|\}\}|\$\{|<%|%>/],
  ["OPERATOR", /\$(where|ne|gt|gte|lt|lte|regex|expr|function|eval|in|nin|or|and|not)\b/i],
];

/**
 * Any of the signatures, in one scan of a string instead of eight: almost every value matches
 * none. Where it matches, the patterns are tried in order to name the first. Case-insensitive as
 * all but two are, and those two match no letters.
 */
const ANY_SIGNATURE = new RegExp(
  VALUE_SIGNATURES.map(([, pattern]) => `(?:${pattern.source})`).join("|"),
  "i",
);
// Joining keeps a pattern's meaning only if its flags are at most `i` (none only where it has no
// letter to match) and it has no numbered backreference (the joined pattern numbers the groups
// anew): checked here, when the module loads.
for (const [signature, pattern] of VALUE_SIGNATURES) {
  const letters = /[a-z]/i.test(pattern.source.replace(/\\./g, ""));
  if (!/^i?$/.test(pattern.flags) || (pattern.flags === "" && letters)) {
    throw new Error(`${signature}: a pattern joined into ANY_SIGNATURE must be /…/i`);
  }
  if (/\\[1-9]/.test(pattern.source)) {
    throw new Error(`${signature}: name the backreference (\\k<name>) to join the pattern`);
  }
}

const POLLUTION_KEYS = new Set(["__proto__", "constructor", "prototype"]);
const MAX_NODES = 2000;
/**
 * Characters of a string (value or key) that are screened: over three times the longest string the
 * body schema accepts, so a longer one makes the body invalid (400) whatever it holds. The bound
 * keeps the screen's work per string small whatever the patterns.
 */
export const MAX_SCREENED_LENGTH = 1024;

/**
 * The first attack signature in a parsed request body, or null. Looks at every key and every
 * string value, at any depth (bounded). Real values pass: `o'brien@example.com`,
 * `first+tag@example.com`, `+44 (20) 7946-0958`.
 */
export function findThreat(body: unknown): ThreatSignature | null {
  const stack: unknown[] = [body];
  let visited = 0;
  while (stack.length > 0 && visited < MAX_NODES) {
    const value = stack.pop();
    visited++;
    if (typeof value === "string") {
      const screened =
        value.length > MAX_SCREENED_LENGTH ? value.slice(0, MAX_SCREENED_LENGTH) : value;
      if (ANY_SIGNATURE.test(screened)) {
        for (const [signature, pattern] of VALUE_SIGNATURES) {
          if (pattern.test(screened)) {
            return signature;
          }
        }
      }
    } else if (Array.isArray(value)) {
      stack.push(...(value as unknown[]));
    } else if (typeof value === "object" && value !== null) {
      for (const key of Object.keys(value)) {
        if (POLLUTION_KEYS.has(key)) {
          return "PROTOTYPE_POLLUTION";
        }
        if (key.startsWith("$")) {
          return "OPERATOR";
        }
        stack.push(key, (value as Record<string, unknown>)[key]);
      }
    }
  }
  return null;
}
