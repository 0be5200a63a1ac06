import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { VARIABLES } from "../src/config.js";

describe("README", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");

  it("documents every configuration variable with its default", () => {
    for (const variable of VARIABLES) {
      const row = readme.split("\n").find((line) => line.startsWith(`| \`${variable.name}\``));
      assert.ok(row, `${variable.name} has a row in the configuration table`);
      if (variable.default !== "") {
        assert.ok(
          row.includes(`\`${variable.default}\``),
          `${variable.name} shows its default ${variable.default}`,
        );
      }
    }
  });
});
