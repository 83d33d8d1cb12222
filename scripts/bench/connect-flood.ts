/**
 * `npm run flood`: the Connect flood of issue 14 at full size, on the real
 * clock, with figures. What test/e2e/connect-flood.test.ts asserts on a
 * smaller flood (the suite shares two cores with everything else).
 *
 * A control plane (SQLite in a temp dir) in this process; one host joins over
 * a forwarder from 127.0.0.1. The control plane restarts (same store, new
 * port), and FLOOD_ATTEMPTS forged `Join <host id>.<random>` attempts naming
 * that host and a second, enrolled one are sent from 127.0.0.2 over a
 * forwarder bound to that address: half over FLOOD_CHANNELS grpc-js channels,
 * half as raw HTTP/2 requests that never end their side, in worker threads.
 * Once the flood is underway the host's path comes back (it reconnects under
 * its normal backoff) and the second host joins. Printed: attempts per second,
 * how they ended, the limiter's table and the streams held before
 * verification at their peaks (and their bounds), how each host got in, and
 * the control plane's event-loop load and memory. Exits non-zero if a host was
 * refused by the limiter or a bound was passed.
 *
 * Environment: FLOOD_ATTEMPTS (100000), FLOOD_CHANNELS (20 per half),
 * FLOOD_IN_FLIGHT (8 per channel), BENCH_BOUND_MS (120000: each wait).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { SystemClock } from '../../common/clock.js';
import { createLogger } from '../../common/logger.js';
import { ControlPlane } from '../../control-plane/control-plane.js';
import { SqliteStore } from '../../control-plane/store/sqlite-store.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { connectFlood, type ConnectFloodResult } from '../support/connect-flood.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { envCount, unary, within } from './bench-support.js';

const ATTEMPTS = envCount('FLOOD_ATTEMPTS', 100_000);
const CHANNELS = envCount('FLOOD_CHANNELS', 20);
const IN_FLIGHT = envCount('FLOOD_IN_FLIGHT', 8);
/** The defaults, written out so the figures can name them. */
const LIMITS = {
  windowMs: 10_000,
  maxFailuresPerSource: 20,
  globalBudget: 500,
  maxSources: 10_000,
  maxUnverifiedStreamsPerConnection: 8,
  maxUnverifiedStreams: 1_024,
} as const;

interface Lost {
  code: number;
  attempt: number;
}

/** Resolves once `host` says it is connected. */
function connected(host: AgentHost): Promise<void> {
  return host.state === 'connected' ? Promise.resolve() : new Promise((resolve) => host.events.once('connected', () => resolve()));
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'tether-bench-flood-'));
  const clock = new SystemClock();
  const logger = createLogger({ level: 'warn' });
  const adminToken = randomBytes(24).toString('base64url');
  const start = async (): Promise<{ cp: ControlPlane; store: SqliteStore; admin: AdminServiceClient }> => {
    const store = SqliteStore.open(join(dir, 'tether.db'));
    const cp = await ControlPlane.start({ store, clock, logger, adminToken, address: '127.0.0.1:0', connectLimits: LIMITS });
    const admin = new AdminServiceClient(`127.0.0.1:${cp.port}`, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor({ get: () => adminToken })] });
    return { cp, store, admin };
  };
  let running = await start();
  const hostPath = await FaultProxy.start({ targetPort: running.cp.port });
  const attackerPath = await FaultProxy.start({ targetPort: running.cp.port, localAddress: '127.0.0.2' });
  const hosts: AgentHost[] = [];
  try {
    const steadyEnrolled = await unary(running.admin.enrollHost.bind(running.admin), { name: 'steady', joinTtlMs: 0 });
    const steady = AgentHost.start({ target: hostPath.target, clock, logger, credentialStore: new MemoryHostCredentialStore(), joinToken: steadyEnrolled.joinToken });
    hosts.push(steady);
    await within(connected(steady), 'steady host connected');
    const fresh = await unary(running.admin.enrollHost.bind(running.admin), { name: 'fresh', joinTtlMs: 0 });

    // The restart: the host loses its stream and retries under its own backoff.
    running.admin.close();
    await running.cp.close();
    await running.store.close();
    running = await start();
    const cp = running.cp;
    attackerPath.setTarget(cp.port);

    const elu = performance.eventLoopUtilization();
    const rssBeforeMiB = process.memoryUsage().rss / 2 ** 20;
    let floodUnderway: () => void = () => undefined;
    const underway = new Promise<void>((resolve) => {
      floodUnderway = resolve;
    });
    const half = { target: attackerPath.target, attempts: Math.floor(ATTEMPTS / 2), channels: CHANNELS, inFlightPerChannel: IN_FLIGHT, hostIds: [steadyEnrolled.hostId, fresh.hostId] };
    let peakHeld = 0;
    let peakSources = 0;
    const sample = (): void => {
      peakHeld = Math.max(peakHeld, cp.unverifiedHostStreams.held);
      peakSources = Math.max(peakSources, cp.connectLimiterSources.tracked);
    };
    const floods = Promise.all([
      connectFlood({ ...half, client: 'grpc-js', progressEvery: 500, onProgress: (ended) => (sample(), ended >= 2_000 && floodUnderway()) }),
      connectFlood({ ...half, client: 'http2', attempts: ATTEMPTS - half.attempts, progressEvery: 500, onProgress: sample }),
    ]);
    await within(Promise.race([underway, floods]), 'the flood to get underway');

    // The steady host's path comes back mid-flood; count its attempts from here.
    const steadyLost: Lost[] = [];
    steady.events.on('disconnected', (e: Lost) => void steadyLost.push(e));
    const retargetedAt = performance.now();
    hostPath.setTarget(cp.port);
    await within(connected(steady), 'the steady host to reconnect during the flood');
    const steadyInMs = performance.now() - retargetedAt;

    const freshLost: Lost[] = [];
    const joinStartedAt = performance.now();
    const freshHost = AgentHost.start({ target: hostPath.target, clock, logger, credentialStore: new MemoryHostCredentialStore(), joinToken: fresh.joinToken });
    hosts.push(freshHost);
    freshHost.events.on('disconnected', (e: Lost) => void freshLost.push(e));
    await within(connected(freshHost), 'the fresh host to join during the flood');
    const freshInMs = performance.now() - joinStartedAt;
    const stillFlooding = cp.unverifiedHostStreams.held > 0 || cp.connectLimiterSources.tracked > 0;

    const results: ConnectFloodResult[] = await within(floods, 'the flood to end');
    const used = performance.eventLoopUtilization(elu);
    const rssAfterMiB = process.memoryUsage().rss / 2 ** 20;
    const codes = new Map<string, number>();
    for (const result of results) for (const [code, n] of result.codes) codes.set(code, (codes.get(code) ?? 0) + n);
    const ended = results.reduce((n, r) => n + r.ended, 0);
    const elapsedMs = Math.max(...results.map((r) => r.elapsedMs));
    const named = Object.fromEntries([...codes].map(([code, n]) => [grpc.status[Number(code)] ?? code, n]));
    const unverified = cp.unverifiedHostStreams;
    const sources = cp.connectLimiterSources;
    console.log(`connect flood: ${ended} forged Join attempts from 127.0.0.2 over ${2 * CHANNELS} connections (${IN_FLIGHT} in flight each), half grpc-js, half raw HTTP/2 never ending its side`);
    console.log(`  ${Math.round(elapsedMs)} ms: ${Math.round(ended / (elapsedMs / 1000))} attempts/s; ended ${JSON.stringify(named)}`);
    console.log(`  limiter table: peak ${Math.max(sources.peak, peakSources)} sources (bound ${LIMITS.maxSources}); ${sources.tracked} now`);
    console.log(
      `  streams held before verification: peak ${Math.max(unverified.peakHeld, peakHeld)} (bounds ${LIMITS.maxUnverifiedStreamsPerConnection} per connection, ${LIMITS.maxUnverifiedStreams} in all); ` +
        `refused at a bound ${unverified.refusedTotal}; ${unverified.held} now`,
    );
    console.log(`  steady host (reconnecting after the restart): in ${Math.round(steadyInMs)} ms after its path came back, ${steadyLost.length} refused attempts ${JSON.stringify(steadyLost.map((l) => grpc.status[l.code]))}`);
    console.log(`  fresh host (joining): in ${Math.round(freshInMs)} ms, ${freshLost.length} refused attempts ${JSON.stringify(freshLost.map((l) => grpc.status[l.code]))}; flood still running then: ${stillFlooding}`);
    console.log(`  control plane event loop ${(used.utilization * 100).toFixed(0)}% busy during the flood; RSS ${rssBeforeMiB.toFixed(0)} MiB → ${rssAfterMiB.toFixed(0)} MiB (whole process, workers included)`);
    const problems = [
      ...(steadyLost.length > 0 ? ['the steady host was refused'] : []),
      ...(freshLost.length > 0 ? ['the fresh host was refused'] : []),
      ...(codes.has('held') || codes.has('no-status') ? ['streams were held or reset without a status'] : []),
      ...(Math.max(sources.peak, peakSources) > LIMITS.maxSources ? ['the limiter table passed its bound'] : []),
      ...(Math.max(unverified.peakHeld, peakHeld) > LIMITS.maxUnverifiedStreams ? ['unverified streams passed their bound'] : []),
      ...(ended !== ATTEMPTS ? [`only ${ended} of ${ATTEMPTS} attempts ended`] : []),
    ];
    if (problems.length > 0) {
      console.error(`FAILED: ${problems.join('; ')}`);
      process.exitCode = 1;
    }
  } finally {
    for (const host of hosts) await host.close();
    running.admin.close();
    await running.cp.close();
    await running.store.close();
    await hostPath.close();
    await attackerPath.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
