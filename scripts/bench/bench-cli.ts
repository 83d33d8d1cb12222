/**
 * The pure part of every benchmark's command line and report: flags, the
 * summary of a series of runs (median and spread), the ratio against the raw
 * baseline, and the one JSON line each benchmark ends with (what `npm run
 * bench` collects). No I/O, no gRPC, so a cheap test can cover it.
 */
import { parseArgs } from 'node:util';

/** The flags every benchmark takes, plus its own whole-number flags. */
export interface BenchArgs {
  /** The small size (each benchmark under 60 s). */
  isQuick: boolean;
  /** Interleaved rounds of Tether and its baseline (at least 3). */
  rounds: number;
  /** The benchmark's own whole-number flags (`--agents 1000`), by name. */
  counts: Record<string, number>;
  /**
   * `--store sqlite,postgres://…`: the stores to run on, in order (default
   * `sqlite`); each a `postgres://` server gets a fresh schema per run. For
   * the benchmarks that take it (delivery throughput, rotation storm).
   */
  stores: string[];
}

/** Every benchmark runs at least this many interleaved rounds. */
export const MIN_ROUNDS = 3;

/**
 * Parses `argv` (without node and the script): `--quick`, `--rounds N` (at
 * least 3) and the flags named in `countDefaults`, each a positive whole
 * number whose default depends on `--quick` (`{ agents: [100_000, 5_000] }`:
 * full, quick). Unknown flags and bad values throw, naming the flag.
 */
export function parseBenchArgs(argv: readonly string[], countDefaults: Readonly<Record<string, readonly [full: number, quick: number]>> = {}): BenchArgs {
  const options: Record<string, { type: 'string' | 'boolean' }> = { quick: { type: 'boolean' }, rounds: { type: 'string' }, store: { type: 'string' } };
  for (const name of Object.keys(countDefaults)) options[name] = { type: 'string' };
  const { values } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false });
  const isQuick = values.quick === true;
  const rounds = values.rounds === undefined ? MIN_ROUNDS : positiveCount('rounds', values.rounds);
  if (rounds < MIN_ROUNDS) throw new Error(`--rounds must be at least ${MIN_ROUNDS}, got ${rounds}`);
  const counts: Record<string, number> = {};
  for (const [name, [full, quick]] of Object.entries(countDefaults)) {
    const given = values[name];
    counts[name] = given === undefined ? (isQuick ? quick : full) : positiveCount(name, given);
  }
  return { isQuick, rounds, counts, stores: parseStores(typeof values.store === 'string' ? values.store : 'sqlite') };
}

/** `--store`'s list: `sqlite` and `postgres://` URLs, comma-separated, none twice. */
function parseStores(list: string): string[] {
  const stores = list.split(',').map((entry) => entry.trim());
  for (const store of stores) {
    if (store !== 'sqlite' && !/^postgres(ql)?:\/\//i.test(store)) throw new Error(`--store takes sqlite and postgres://… URLs, comma-separated; got ${store === '' ? 'an empty entry' : 'another value'}`);
  }
  if (new Set(stores).size !== stores.length) throw new Error('--store names a store twice');
  return stores;
}

/** A store of `--store` as a label: `sqlite`, or `postgres` (never the URL: it may hold a password). */
export function storeLabel(store: string): 'sqlite' | 'postgres' {
  return store === 'sqlite' ? 'sqlite' : 'postgres';
}

function positiveCount(name: string, value: string | boolean | undefined): number {
  const parsed = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(parsed) || parsed <= 0) throw new Error(`--${name} must be a positive whole number, got ${String(value)}`);
  return parsed;
}

/** The median of a series and how far it spreads. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  /** (max − min) / median, as a percentage: how much the rounds disagree. */
  spreadPct: number;
}

/** The median (the lower middle for an even count) and spread of `values`. */
export function summarize(values: readonly number[]): Summary {
  if (values.length === 0) return { median: Number.NaN, min: Number.NaN, max: Number.NaN, spreadPct: Number.NaN };
  const sorted = [...values].sort((a, b) => a - b);
  const median = sorted[Math.floor((sorted.length - 1) / 2)] as number;
  const min = sorted[0] as number;
  const max = sorted.at(-1) as number;
  return { median, min, max, spreadPct: median === 0 ? 0 : ((max - min) / Math.abs(median)) * 100 };
}

/** The `q`-quantile (0..1) of `values`, nearest rank. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
}

/** Rounds to `digits` decimals (NaN stays NaN, and becomes null in JSON). */
export function round(value: number, digits = 3): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** The last line of every benchmark: `{"name", "ratio", ...figures}` on one line. */
export function resultLine(name: string, ratio: number, figures: Readonly<Record<string, unknown>> = {}): string {
  return JSON.stringify({ name, ratio: round(ratio), ...figures });
}

/** A benchmark's result as its last line has it. */
export interface BenchResult {
  name: string;
  ratio: number | null;
  [figure: string]: unknown;
}

/** The result in a benchmark's output: its last non-empty line, parsed; undefined when that is no result line. */
export function parseResultLine(output: string): BenchResult | undefined {
  const last = output.trimEnd().split('\n').at(-1)?.trim();
  if (last === undefined || !last.startsWith('{')) return undefined;
  try {
    const parsed: unknown = JSON.parse(last);
    if (typeof parsed !== 'object' || parsed === null) return undefined;
    const { name, ratio } = parsed as { name?: unknown; ratio?: unknown };
    if (typeof name !== 'string' || !(typeof ratio === 'number' || ratio === null)) return undefined;
    return parsed as BenchResult;
  } catch {
    return undefined;
  }
}

/** The order of `tasks` in round `round` (1-based): rotated each round, so none always runs first (cold). */
export function roundOrder<T>(tasks: readonly T[], round: number): T[] {
  const shift = (round - 1) % Math.max(1, tasks.length);
  return [...tasks.slice(shift), ...tasks.slice(0, shift)];
}
