/**
 * What the benchmarks share: bounded waits, timing, the store modes compared
 * (so before and after `synchronous = FULL` and group commit run in one
 * invocation), event-loop delay, and where the stores go (a real filesystem).
 */
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { resolve } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import type { SqliteStoreOptions } from '../../control-plane/store/sqlite-store.js';

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

/** The median of `values`. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
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

/** One way of running the store, compared against the others. */
export interface StoreMode {
  key: string;
  name: string;
  store: SqliteStoreOptions;
  /** Scheduled rotations running at once (1: one after the other, as before group commit). */
  maxConcurrentRotations: number;
}

const ALL_MODES: readonly StoreMode[] = [
  { key: 'normal', name: 'NORMAL, one commit per write (before)', store: { synchronous: 'normal', isGroupCommit: false }, maxConcurrentRotations: 1 },
  { key: 'full-unbatched', name: 'FULL, one commit per write', store: { synchronous: 'full', isGroupCommit: false }, maxConcurrentRotations: 1 },
  {
    key: 'full',
    name: 'FULL, group commit (after)',
    store: { synchronous: 'full', isGroupCommit: true },
    // The control plane's default unless BENCH_CONCURRENT_ROTATIONS says otherwise.
    maxConcurrentRotations: envCount('BENCH_CONCURRENT_ROTATIONS', 8),
  },
];

/** The modes to run: BENCH_MODES (comma-separated keys: normal, full-unbatched, full), all three by default. */
export function selectedModes(): StoreMode[] {
  const wanted = (process.env.BENCH_MODES ?? '').split(',').map((key) => key.trim()).filter((key) => key !== '');
  if (wanted.length === 0) return [...ALL_MODES];
  return wanted.map((key) => {
    const mode = ALL_MODES.find((m) => m.key === key);
    if (mode === undefined) throw new Error(`BENCH_MODES: unknown mode ${key} (known: ${ALL_MODES.map((m) => m.key).join(', ')})`);
    return mode;
  });
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
