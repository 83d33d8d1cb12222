/**
 * What the benchmarks share: bounded waits, timing and event-loop delay,
 * interleaved rounds, the table of medians, and where the stores go (a real
 * filesystem, never tmpfs: `synchronous = FULL` must pay for its fsyncs).
 */
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { resolve } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { roundOrder, summarize, type Summary } from './bench-cli.js';

/** A positive integer from the environment, or `fallback`. */
export function envCount(name: string, fallback: number): number {
  const value = process.env[name];
  if (value === undefined || value === '') return fallback;
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed) || parsed <= 0) throw new Error(`${name} must be a positive integer, got ${value}`);
  return parsed;
}

/** Every wait of a benchmark is bounded by this (BENCH_BOUND_MS, default 120 s). */
export const BOUND_MS = envCount('BENCH_BOUND_MS', 120_000);

/** Resolves as `promise` does, or fails naming `what` after the bound (a benchmark never hangs). */
export async function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`bench: no ${what} within ${BOUND_MS} ms`)), BOUND_MS);
  });
  try {
    return await Promise.race([promise, bound]);
  } finally {
    clearTimeout(timer);
  }
}

/** One unary call of a generated client method, as a Promise, with the bound as its deadline. */
export function unary<Req, Res>(
  method: (request: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, callback: (err: grpc.ServiceError | null, res: Res) => void) => grpc.ClientUnaryCall,
  request: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, new grpc.Metadata(), { deadline: Date.now() + BOUND_MS }, (err, res) => (err === null ? resolve(res) : reject(err)));
  });
}

/** Wall and CPU milliseconds of one run, and the event-loop delay during it. */
export interface Timing {
  wallMs: number;
  cpuMs: number;
  /** 99th percentile of the event-loop delay, ms. */
  loopP99Ms: number;
  /** Largest event-loop delay, ms. */
  loopMaxMs: number;
}

/**
 * Starts timing: wall clock, this process's CPU time, and the event-loop delay
 * (perf_hooks, sampled every millisecond: how long a timer due now waits,
 * which is how long a synchronous fsync holds every stream of the process).
 */
export function startTiming(): () => Timing {
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  histogram.enable();
  const wallAtMs = performance.now();
  const cpuAt = process.cpuUsage();
  return () => {
    histogram.disable();
    const cpu = process.cpuUsage(cpuAt);
    return {
      wallMs: performance.now() - wallAtMs,
      cpuMs: (cpu.user + cpu.system) / 1000,
      loopP99Ms: histogram.percentile(99) / 1e6,
      loopMaxMs: histogram.max / 1e6,
    };
  };
}

/** The filesystem type `path` lives on, from /proc/mounts (undefined where there is none). */
function filesystemType(path: string): string | undefined {
  let mounts: string;
  try {
    mounts = readFileSync('/proc/mounts', 'utf8');
  } catch {
    return undefined;
  }
  let best: { point: string; type: string } | undefined;
  for (const line of mounts.split('\n')) {
    const [, point, type] = line.split(' ');
    if (point === undefined || type === undefined) continue;
    const isUnder = path === point || path.startsWith(point.endsWith('/') ? point : `${point}/`);
    if (isUnder && (best === undefined || point.length > best.point.length)) best = { point, type };
  }
  return best?.type;
}

/**
 * Where benchmark stores go: BENCH_DIR, or the OS temp dir. Refused on tmpfs
 * (no fsync cost there: FULL would look free).
 */
export function benchDir(): string {
  const dir = resolve(process.env.BENCH_DIR ?? tmpdir());
  const type = filesystemType(dir);
  if (type === 'tmpfs' || type === 'ramfs') throw new Error(`bench: ${dir} is on ${type}; set BENCH_DIR to a directory on a real disk`);
  console.log(`stores in ${dir} (${type ?? 'unknown filesystem'})`);
  return dir;
}

/** Prints rows as a Markdown table, the first row the header; columns after the first right-aligned. */
export function printTable(rows: string[][]): void {
  const columns = Math.max(...rows.map((r) => r.length));
  const widths = Array.from({ length: columns }, (_, i) => Math.max(...rows.map((r) => r[i]?.length ?? 0)));
  rows.forEach((cells, row) => {
    console.log(`| ${cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0))).join(' | ')} |`);
    if (row === 0) console.log(`|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`);
  });
}

/**
 * Runs `rounds` rounds of every variant (Tether and its baseline, say), in an
 * order rotated each round so none always runs first; each run returns its
 * figures, which are logged and kept per variant in run order.
 */
export async function interleave<V extends string, F extends Record<string, number>>(
  rounds: number,
  variants: Readonly<Record<V, () => Promise<F>>>,
  describe: (variant: V, figures: F) => string,
): Promise<Record<V, F[]>> {
  const names = Object.keys(variants) as V[];
  const results = Object.fromEntries(names.map((name) => [name, [] as F[]])) as Record<V, F[]>;
  for (let round = 1; round <= rounds; round++) {
    for (const name of roundOrder(names, round)) {
      const figures = await variants[name]();
      results[name].push(figures);
      console.log(`  round ${round}, ${name}: ${describe(name, figures)}`);
    }
  }
  return results;
}

/** The summary of one figure over a series of runs. */
export function figure<F extends Record<string, number>>(runs: readonly F[], key: keyof F & string): Summary {
  return summarize(runs.map((run) => run[key] as number));
}

/** `median (min–max, ±spread %)` of a summary, `digits` decimals. */
export function describeSummary(summary: Summary, digits = 0): string {
  return `${summary.median.toFixed(digits)} (${summary.min.toFixed(digits)}–${summary.max.toFixed(digits)}, spread ${summary.spreadPct.toFixed(0)} %)`;
}

/** Resolves once `isDone()` holds, checking every `everyMs` (bounded by {@link BOUND_MS}). */
export async function until(isDone: () => boolean, what: string, everyMs = 20): Promise<void> {
  const startedMs = performance.now();
  while (!isDone()) {
    if (performance.now() - startedMs > BOUND_MS) throw new Error(`bench: no ${what} within ${BOUND_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** Runs `task` over `items`, `concurrency` at a time, in order of start. */
export async function eachLimited<T>(items: readonly T[], concurrency: number, task: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const index = next++;
      await task(items[index] as T, index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}

/** Calls `global.gc` (node --expose-gc) twice and returns the heap used; throws without it. */
export function heapAfterGc(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('bench: run node with --expose-gc');
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}
