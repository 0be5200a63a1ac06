import type { CompiledQuery } from "kysely";

/** Stands for argument `index` while the statement compiles; no value of the builder equals it. */
function marker(index: number): string {
  return `\u0000slot:${index}\u0000`;
}

/**
 * A statement built with Kysely and compiled once; each execution only binds its arguments.
 *
 * The service's statements have a fixed shape (their text never depends on the values), so
 * building and compiling them on every request, as Kysely's query builder does, repeats the same
 * work: it was a fifth of the server's time on SQLite (README, Benchmark). `compile` calls the
 * builder once with a marker in place of each argument and records where each marker landed among
 * the parameters; `bind` puts the real values there. Parameters that are constants of the
 * statement stay as compiled.
 */
export class FixedStatement<Args extends readonly unknown[]> {
  private constructor(
    private readonly compiled: CompiledQuery,
    /** [parameter position, argument index] for every parameter that is an argument. */
    private readonly slots: readonly (readonly [number, number])[],
  ) {}

  static compile<Args extends readonly unknown[]>(
    arity: Args["length"],
    build: (...args: Args) => CompiledQuery,
  ): FixedStatement<Args> {
    const markers = Array.from({ length: arity }, (_, i) => marker(i));
    const compiled = build(...(markers as unknown as Args));
    const slots: (readonly [number, number])[] = [];
    compiled.parameters.forEach((parameter, position) => {
      const index = markers.indexOf(parameter as string);
      if (index >= 0) {
        slots.push([position, index]);
      }
    });
    const used = new Set(slots.map(([, index]) => index));
    if (used.size !== arity) {
      throw new Error(`a fixed statement uses ${used.size} of its ${arity} arguments`);
    }
    return new FixedStatement(compiled, slots);
  }

  get sql(): string {
    return this.compiled.sql;
  }

  bind(args: Args): CompiledQuery {
    const parameters = [...this.compiled.parameters];
    for (const [position, index] of this.slots) {
      parameters[position] = args[index];
    }
    return { ...this.compiled, parameters };
  }
}
