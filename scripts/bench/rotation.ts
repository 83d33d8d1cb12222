/**
 * `npm run bench:rotation`: agent-credential rotations per second through the
 * real rotation path, and the event-loop delay meanwhile, for each store mode
 * (before and after `synchronous = FULL` and group commit, in one invocation).
 *
 * A control plane (SQLite in a fresh directory on a real filesystem, see
 * BENCH_DIR) and one agent host with N idle module agents, in this process over
 * loopback, on a clock that is real time plus an offset the benchmark moves
 * forward. Each wave jumps the clock past every agent's rotation due time (the
 * default 1 h TTL rotates at 50-60 % of its life), so the rotation scheduler
 * finds all N due at once: it signs each credential, records it in the store
 * (compare-and-set on the generation) and pushes it down the host's stream,
 * and the host applies it to the agent's holder. The figure is rotations
 * applied per second, from the jump to the last one the host applied (a first,
 * warm-up wave is not counted). The
 * signing-rate cap is lifted (it would otherwise be what is measured) and
 * heartbeats are far apart (1,000 heartbeats at every jump are not rotations).
 *
 * Environment: BENCH_AGENTS (1000), BENCH_WAVES (3), BENCH_MODES (all:
 * normal, full-unbatched, full), BENCH_CONCURRENT_ROTATIONS (8, the control plane's default: scheduled
 * rotations at once in the group-commit mode), BENCH_DIR (OS temp dir;
 * refused on tmpfs), BENCH_BOUND_MS (120000) bounds every wait.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { createLogger } from '../../common/logger.js';
import { ControlPlane } from '../../control-plane/control-plane.js';
import { SqliteStore } from '../../control-plane/store/sqlite-store.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { benchDir, envCount, median, printTable, selectedModes, startTiming, type StoreMode, type Timing, unary, within } from './bench-support.js';
import { JumpClock } from './jump-clock.js';

const AGENTS = envCount('BENCH_AGENTS', 1_000);
const WAVES = envCount('BENCH_WAVES', 3);
/** Past every rotation due time of a 1 h token (at most 60 % of its life), short of its expiry. */
const JUMP_MS = 40 * 60_000;
/** Dispatch calls in flight at once while setting up. */
const DISPATCH_CONCURRENCY = 50;

/** Runs WAVES waves of N rotations in one store mode; one timing per wave. */
async function rotationRuns(root: string, mode: StoreMode): Promise<Timing[]> {
  const dir = mkdtempSync(join(root, 'tether-bench-rotation-'));
  const store = SqliteStore.open(join(dir, 'tether.db'), mode.store);
  const clock = new JumpClock();
  const logger = createLogger({ level: 'warn' });
  const adminToken = randomBytes(24).toString('base64url');
  const cp = await ControlPlane.start({
    store,
    clock,
    logger,
    adminToken,
    address: '127.0.0.1:0',
    maxRotationsPerSecond: 1_000_000,
    maxConcurrentRotations: mode.maxConcurrentRotations,
    heartbeatIntervalMs: 24 * 3_600_000,
  });
  const target = `127.0.0.1:${cp.port}`;
  const admin = new AdminServiceClient(target, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor({ get: () => adminToken })] });
  let host: AgentHost | undefined;
  try {
    const idle: AgentModule = () => ({ onMessage: () => Promise.resolve() });
    const enrolled = await unary(admin.enrollHost.bind(admin), { name: 'bench-host', joinTtlMs: 0 });
    let started = 0;
    let allStarted: () => void = () => undefined;
    const isStarted = new Promise<void>((resolve) => {
      allStarted = resolve;
    });
    let applied = 0;
    let onApplied: () => void = () => undefined;
    const connected = new Promise<void>((resolve) => {
      host = AgentHost.start({ target, clock, logger, credentialStore: new MemoryHostCredentialStore(), joinToken: enrolled.joinToken, modules: new Map([['idle', idle]]) });
      host.events.once('connected', () => resolve());
      host.events.on('agent-started', () => {
        if (++started === AGENTS) allStarted();
      });
      host.events.on('rotation-applied', () => {
        applied++;
        onApplied();
      });
    });
    await within(connected, 'host connection');
    const agentIds = Array.from({ length: AGENTS }, (_, i) => `bench-agent-${i}`);
    for (let i = 0; i < agentIds.length; i += DISPATCH_CONCURRENCY) {
      await Promise.all(
        agentIds.slice(i, i + DISPATCH_CONCURRENCY).map((agentId) =>
          unary(admin.dispatchAgent.bind(admin), {
            agentId,
            name: agentId,
            hostId: enrolled.hostId,
            hostLabels: [],
            spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
          }),
        ),
      );
    }
    await within(isStarted, `${AGENTS} agents started`);

    const timings: Timing[] = [];
    // Wave 0 warms up (JIT, statement cache) and is not counted.
    for (let wave = 0; wave <= WAVES; wave++) {
      applied = 0;
      const done = new Promise<void>((resolve) => {
        onApplied = () => {
          if (applied === AGENTS) resolve();
        };
      });
      const stopTiming = startTiming();
      clock.jump(JUMP_MS);
      await within(done, `${AGENTS} rotations applied in wave ${wave}`);
      const timing = stopTiming();
      if (wave > 0) timings.push(timing);
    }
    // Every rotation the host applied was recorded in the store first.
    const page = await store.listAgents({}, null, AGENTS);
    const behind = page.items.filter((agent) => agent.generation < 2 + WAVES).length;
    if (behind > 0) throw new Error(`bench: ${behind} agents have fewer than ${WAVES + 1} rotations recorded`);
    return timings;
  } finally {
    await host?.close();
    admin.close();
    await cp.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const root = benchDir();
  const modes = selectedModes();
  console.log(`bench:rotation — ${AGENTS} agents on one host, ${WAVES} waves of ${AGENTS} rotations per mode; control plane and host in this process, loopback`);
  const rows: string[][] = [['store mode', 'median ms/wave', 'rotations/s', 'CPU µs/rotation', 'loop delay p99 ms', 'loop delay max ms']];
  for (const mode of modes) {
    const timings = await rotationRuns(root, mode);
    timings.forEach((t, i) =>
      console.log(`  ${mode.key} wave ${i + 1}: ${t.wallMs.toFixed(0)} ms (CPU ${t.cpuMs.toFixed(0)} ms), loop delay p99 ${t.loopP99Ms.toFixed(1)} ms, max ${t.loopMaxMs.toFixed(1)} ms`),
    );
    const wallMs = median(timings.map((t) => t.wallMs));
    rows.push([
      mode.name,
      wallMs.toFixed(0),
      (AGENTS / (wallMs / 1000)).toFixed(0),
      ((median(timings.map((t) => t.cpuMs)) * 1000) / AGENTS).toFixed(0),
      median(timings.map((t) => t.loopP99Ms)).toFixed(1),
      Math.max(...timings.map((t) => t.loopMaxMs)).toFixed(1),
    ]);
  }
  printTable(rows);
}

await main();
