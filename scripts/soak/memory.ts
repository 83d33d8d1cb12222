import { readdirSync } from 'node:fs';
import { setFlagsFromString, writeHeapSnapshot } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { ControlPlaneProcess } from '../support/control-plane-process.js';

/** One process's memory at a quiet point. */
export interface MemorySnapshot {
  pid: number;
  heapUsedBytes: number;
  rssBytes: number;
  openFds: number;
}

/**
 * A full collection in this process. `npm run soak` runs plain `tsx`, so the
 * `gc` function is obtained here rather than through `--expose-gc`.
 */
export function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  gc();
  gc();
}

/** This process after a full collection; descriptors counted in /proc/<pid>/fd. With `snapshotPath`, a heap snapshot too. */
export function measureSelf(snapshotPath?: string): MemorySnapshot {
  collectGarbage();
  if (snapshotPath !== undefined) {
    writeHeapSnapshot(snapshotPath);
    collectGarbage();
  }
  const usage = process.memoryUsage();
  return { pid: process.pid, heapUsedBytes: usage.heapUsed, rssBytes: usage.rss, openFds: readdirSync(`/proc/${process.pid}/fd`).length };
}

interface ProbeReply {
  type: 'memory';
  id: number;
  isCollected: boolean;
  heapUsedBytes: number;
  rssBytes: number;
}

function isProbeReply(value: unknown): value is ProbeReply {
  return typeof value === 'object' && value !== null && (value as { type?: unknown }).type === 'memory';
}

/**
 * The control-plane child after a full collection, through the probe
 * preloaded into it (scripts/support/memory-probe.mjs); its descriptors are
 * counted from here, in /proc/<pid>/fd. With `snapshotPath`, the child also
 * writes a heap snapshot there (for finding what grew).
 */
export async function measureChild(child: ControlPlaneProcess, id: number, snapshotPath?: string): Promise<MemorySnapshot> {
  const pid = child.pid;
  if (pid === undefined) throw new Error('the control plane has no pid');
  const reply = await child.request({ type: 'memory', id, snapshotPath }, (value): value is ProbeReply => isProbeReply(value) && value.id === id);
  if (!reply.isCollected) throw new Error('the control plane was not started with --expose-gc');
  return { pid, heapUsedBytes: reply.heapUsedBytes, rssBytes: reply.rssBytes, openFds: readdirSync(`/proc/${pid}/fd`).length };
}

/** `12.3 MiB`. */
export function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}
