/**
 * `npm run bench:key-revoke`: how long `keys revoke` of the signing
 * key takes to re-sign every agent, at scale, on the real clock.
 *
 * A control plane (SQLite in a temp dir) and BENCH_HOSTS agent hosts carrying
 * BENCH_AGENTS module agents in all, in this process, over loopback. Agent
 * tokens live long (1 h) so no rotation falls due by itself. Then
 * AdminService.RevokeSigningKey on the signing key; the figure is the time from
 * the call to the last agent's host applying its new credential, next to the
 * window the revocation declared (computed from the rate cap). Every agent's
 * credential is then checked to carry another key.
 *
 * Environment: BENCH_AGENTS (10000), BENCH_HOSTS (10), BENCH_RATE (200, the
 * default `--max-rotations-per-second`), BENCH_BOUND_MS (120000; raise it for more agents).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { decodeProtectedHeader } from 'jose';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { SystemClock } from '../../common/clock.js';
import { createLogger } from '../../common/logger.js';
import { ControlPlane } from '../../control-plane/control-plane.js';
import { SqliteStore } from '../../control-plane/store/sqlite-store.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { envCount, unary, within } from './bench-support.js';

const AGENTS = envCount('BENCH_AGENTS', 10_000);
const HOSTS = envCount('BENCH_HOSTS', 10);
const RATE = envCount('BENCH_RATE', 200);
const DISPATCH_CONCURRENCY = 100;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'tether-bench-revoke-'));
  const store = SqliteStore.open(join(dir, 'tether.db'));
  const clock = new SystemClock();
  const logger = createLogger({ level: 'warn' });
  const adminToken = randomBytes(24).toString('base64url');
  const cp = await ControlPlane.start({
    store,
    clock,
    logger,
    adminToken,
    address: '127.0.0.1:0',
    agentTokenTtlMs: 3_600_000,
    heartbeatIntervalMs: 600_000,
    maxRotationsPerSecond: RATE,
  });
  const target = `127.0.0.1:${cp.port}`;
  const admin = new AdminServiceClient(target, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor({ get: () => adminToken })] });
  const hosts: AgentHost[] = [];
  const credentials = new Map<string, ReadOnlyCredentials>();
  const grab: AgentModule = (context) => {
    credentials.set(context.agentId, context.credentials);
    return {};
  };
  let applied = 0;
  let onApplied: () => void = () => undefined;
  try {
    const hostIds: string[] = [];
    for (let i = 0; i < HOSTS; i++) {
      const enrolled = await unary(admin.enrollHost.bind(admin), { name: `bench-${i}`, joinTtlMs: 0 });
      const host = AgentHost.start({
        target,
        clock,
        logger,
        credentialStore: new MemoryHostCredentialStore(),
        joinToken: enrolled.joinToken,
        modules: new Map([['grab', grab]]),
      });
      hosts.push(host);
      host.events.on('rotation-applied', () => {
        applied++;
        onApplied();
      });
      await within(new Promise<void>((resolve) => host.events.once('connected', () => resolve())), `host ${i} connected`);
      hostIds.push(enrolled.hostId);
    }
    const dispatchStartedMs = performance.now();
    for (let start = 0; start < AGENTS; start += DISPATCH_CONCURRENCY) {
      await Promise.all(
        Array.from({ length: Math.min(DISPATCH_CONCURRENCY, AGENTS - start) }, (_, offset) => {
          const index = start + offset;
          const agentId = `bench-agent-${index}`;
          return unary(admin.dispatchAgent.bind(admin), {
            agentId,
            name: agentId,
            hostId: hostIds[index % HOSTS] ?? '',
            hostLabels: [],
            spec: { kind: 'module', module: 'grab', command: '', args: [], config: '' },
          });
        }),
      );
    }
    await within(
      new Promise<void>((resolve) => {
        const check = (): void => {
          if (credentials.size === AGENTS) resolve();
          else setTimeout(check, 50);
        };
        check();
      }),
      'every agent started',
    );
    const dispatchMs = performance.now() - dispatchStartedMs;

    const revokedKid = cp.keys.active().kid;
    const appliedBefore = applied;
    const revokeStartedMs = performance.now();
    const report = await unary(admin.revokeSigningKey.bind(admin), { keyId: revokedKid });
    const answeredMs = performance.now() - revokeStartedMs;
    await within(
      new Promise<void>((resolve) => {
        onApplied = () => {
          if (applied - appliedBefore >= report.agentsScheduled) resolve();
        };
        onApplied();
      }),
      'every agent re-signed',
    );
    const resignedMs = performance.now() - revokeStartedMs;
    const stillRevoked = [...credentials.values()].filter((source) => decodeProtectedHeader(source.get()).kid === revokedKid).length;
    console.log(
      JSON.stringify(
        {
          agents: AGENTS,
          hosts: HOSTS,
          maxRotationsPerSecond: RATE,
          dispatchSeconds: Math.round(dispatchMs) / 1000,
          revokeAnsweredSeconds: Math.round(answeredMs) / 1000,
          agentsScheduled: report.agentsScheduled,
          hostsResigned: report.hostsResigned,
          declaredWindowSeconds: Number(report.resignWindowMs) / 1000,
          measuredResignSeconds: Math.round(resignedMs) / 1000,
          agentsStillOnRevokedKey: stillRevoked,
        },
        null,
        2,
      ),
    );
    if (stillRevoked > 0) process.exitCode = 1;
  } finally {
    for (const host of hosts) await host.close();
    admin.close();
    await cp.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
