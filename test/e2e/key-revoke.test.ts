/**
 * `keys revoke` of the signing key under 1,000 agents on real hosts (real gRPC,
 * the fake clock): every token the key signed is refused at once and the key
 * leaves the JWKS; the standby signs; connected hosts get a new credential at
 * once and the agents soonest-expiring first under the rotation rate cap, within
 * the window the revocation declares; no heartbeat is refused after that window.
 * A host that was away, holding a credential the key signed, is refused for good
 * with a clear reason when it comes back.
 */
import * as grpc from '@grpc/grpc-js';
import { decodeProtectedHeader } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { RESIGN_DELIVERY_ALLOWANCE_MS } from '../../control-plane/tokens/key-revoker.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { HANG_BOUND_MS, nextEvent, waitUntil } from '../support/wait.js';

const HOSTS = 4;
const AGENTS_PER_HOST = 250;
const AGENTS = HOSTS * AGENTS_PER_HOST;
/**
 * The host gives each heartbeat call a gRPC deadline of min(interval, TTL/10, 30 s), and a gRPC deadline is real
 * time while the interval here is fake: at 5 s, a round of 1,000 heartbeats racing the re-signing on a loaded
 * 2-core machine overran it (DEADLINE_EXCEEDED, a refusal that is not the revocation's). At 30 s the deadline is
 * past the suite's hang bound, so no real-time limit tighter than that one is left.
 */
const HEARTBEAT_MS = 30_000;
/** The revocation comes this long before a round of heartbeats, so that round falls early in the window (half re-signed). */
const REVOKE_BEFORE_ROUND_MS = 5_000;
const STEP_MS = 1_000;
const MAX_ROTATIONS_PER_SECOND = 100;
/** Long enough that no rotation falls due by itself during the test: every one it sees is the revocation's. */
const AGENT_TTL_MS = 3_600_000;
const HOST_TTL_MS = 72 * 3_600_000;
const SETUP_CONCURRENCY = 50;

const kidOf = (token: string): string => decodeProtectedHeader(token).kid ?? '';

describe('keys revoke', () => {
  let harness: Harness | undefined;
  const extraHosts: AgentHost[] = [];

  afterEach(async () => {
    for (const host of extraHosts.splice(0)) await host.close();
    await harness?.close();
    harness = undefined;
  });

  it(`re-signs ${AGENTS} agents within the declared window, refuses the revoked key's tokens at once and no heartbeat after the window`, async () => {
    harness = await Harness.start({
      agentTokenTtlMs: AGENT_TTL_MS,
      hostTokenTtlMs: HOST_TTL_MS,
      heartbeatIntervalMs: HEARTBEAT_MS,
      maxRotationsPerSecond: MAX_ROTATIONS_PER_SECOND,
    });
    const h = harness;
    const credentials = new Map<string, ReadOnlyCredentials>();
    const grab: AgentModule = (context) => {
      credentials.set(context.agentId, context.credentials);
      return {};
    };
    const modules = new Map([['grab', grab]]);

    // A host that goes away before the revocation, holding a host credential the key signed.
    const awayStore = new MemoryHostCredentialStore();
    const away = await h.startHost('away', { credentialStore: awayStore, modules });
    await h.dispatch(away.host, away.hostId, 'away-1', 'grab');
    await away.host.close();

    // The fleet: every agent started at the same fake instant, so they heartbeat together, every HEARTBEAT_MS.
    const hostStores: MemoryHostCredentialStore[] = [];
    const hosts: { host: AgentHost; hostId: string }[] = [];
    for (let i = 0; i < HOSTS; i++) {
      const credentialStore = new MemoryHostCredentialStore();
      hostStores.push(credentialStore);
      const started = await h.startHost(`fleet-${i}`, { credentialStore, modules });
      // Each concurrent dispatch waits for its agent-started event.
      started.host.events.setMaxListeners(SETUP_CONCURRENCY + 10);
      hosts.push(started);
    }
    const fleetStartMs = h.clock.now();
    const agentIds: string[] = [];
    for (let i = 0; i < AGENTS; i++) agentIds.push(`agent-${String(i).padStart(4, '0')}`);
    for (let start = 0; start < AGENTS; start += SETUP_CONCURRENCY) {
      await Promise.all(
        agentIds.slice(start, start + SETUP_CONCURRENCY).map((agentId, offset) => {
          const target = hosts[(start + offset) % HOSTS];
          if (target === undefined) throw new Error('no host');
          return h.dispatch(target.host, target.hostId, agentId, 'grab');
        }),
      );
    }
    const tokenOf = (agentId: string): string => credentials.get(agentId)?.get() ?? '';

    const beats: { atMs: number; isOk: boolean; isUnauthenticated: boolean; error?: string }[] = [];
    const applied = { count: 0 };
    for (const { host } of hosts) {
      host.events.on('heartbeat', (e: { isOk: boolean; error?: Error }) => {
        // The agent client turns the status into a typed error, keeping the ServiceError as its cause.
        const cause: unknown = e.error?.cause ?? e.error;
        const code = typeof cause === 'object' && cause !== null && 'code' in cause ? cause.code : undefined;
        beats.push({ atMs: h.clock.now(), isOk: e.isOk, isUnauthenticated: code === grpc.status.UNAUTHENTICATED, ...(e.error === undefined ? {} : { error: `${String(code)} ${e.error.message}` }) });
      });
      host.events.on('rotation-applied', () => applied.count++);
    }
    const refusedByServer: { atMs: number; reason: string }[] = [];
    h.cp.events.on('auth-failure', (e: { principal: string; reason: string }) => {
      if (e.principal === 'agent') refusedByServer.push({ atMs: h.clock.now(), reason: e.reason });
    });
    const issued = { count: 0 };
    h.cp.events.on('credential-issued', (e: { agentId: string }) => {
      if (e.agentId !== '') issued.count++;
    });

    // One round of heartbeats before: all fine.
    h.clock.advance(HEARTBEAT_MS);
    await waitUntil(() => beats.length === AGENTS, 'the first round of heartbeats');
    expect(beats.filter((b) => !b.isOk)).toEqual([]);
    expect(h.clock.now()).toBe(fleetStartMs + HEARTBEAT_MS);
    // Up to just before the next round: it falls inside the window, while the re-signing runs.
    h.clock.advance(HEARTBEAT_MS - REVOKE_BEFORE_ROUND_MS);

    const revokedKid = h.cp.keys.active().kid;
    const standbyKid = h.cp.keys.list().find((key) => key.state === 'standby')?.kid;
    const oldToken = tokenOf('agent-0000');
    expect(kidOf(oldToken)).toBe(revokedKid);

    const revokedAtMs = h.clock.now();
    const issuedBeforeRevoke = issued.count;
    const report = await call(h.admin.revokeSigningKey.bind(h.admin), { keyId: revokedKid });
    expect(report).toMatchObject({ keyId: revokedKid, signerKeyId: standbyKid, hostsResigned: HOSTS, hostsToReenroll: [away.hostId], agentsScheduled: AGENTS });
    // Declared from the rate cap: AGENTS / cap seconds, plus the delivery allowance.
    const windowMs = Number(report.resignWindowMs);
    expect(windowMs).toBe(Math.ceil(AGENTS / MAX_ROTATIONS_PER_SECOND) * 1000 + RESIGN_DELIVERY_ALLOWANCE_MS);
    const windowEndMs = revokedAtMs + windowMs;

    // At once: the revoked key's tokens are refused (cached ones too: this one passed a moment ago), and it left the JWKS.
    const agentApi = h.agentClient();
    expect(await statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId: 'agent-0000' }, bearer(oldToken)))).toBe(grpc.status.UNAUTHENTICATED);
    const { keys } = await call(h.admin.getJwks.bind(h.admin), {});
    expect(keys.map((key) => key.kid)).not.toContain(revokedKid);
    // Connected hosts already hold a credential from the new signer.
    for (const store of hostStores) expect(kidOf((await store.load())?.token ?? '')).toBe(standbyKid);

    // Walk the clock to the end of the window. At each step the control plane is held to its cap (at least
    // `cap × elapsed seconds` re-signed, up to all: the fake clock must not outrun the real work, or its unused
    // budget would be lost and the window missed for a reason the production clock never has), and the hosts
    // catch up with what was sent.
    let heartbeatRounds = 1;
    const step = async (): Promise<void> => {
      h.clock.advance(STEP_MS);
      const elapsedMs = h.clock.now() - revokedAtMs;
      const expected = Math.min(AGENTS, Math.floor((MAX_ROTATIONS_PER_SECOND * elapsedMs) / 1000));
      await waitUntil(() => issued.count - issuedBeforeRevoke >= expected, `${expected} agents re-signed by ${elapsedMs} ms`);
      if ((h.clock.now() - fleetStartMs) % HEARTBEAT_MS === 0) {
        heartbeatRounds++;
        await waitUntil(() => beats.length === AGENTS * heartbeatRounds, `heartbeat round ${heartbeatRounds}`);
      }
      await waitUntil(() => applied.count >= issued.count, `the hosts applied what was sent by ${elapsedMs} ms`);
    };
    while (h.clock.now() < windowEndMs) await step();
    // By the end of the declared window every agent holds a credential from another key: if the scheduler needed
    // more time than declared, this waits on a clock that no longer moves, and fails.
    await waitUntil(() => agentIds.every((agentId) => kidOf(tokenOf(agentId)) !== revokedKid), 'every agent re-signed within the window', HANG_BOUND_MS);
    expect(issued.count).toBeGreaterThanOrEqual(AGENTS);

    // Three more rounds of heartbeats after the window.
    const roundsAtWindowEnd = heartbeatRounds;
    while (heartbeatRounds < roundsAtWindowEnd + 3) await step();

    // Refusals there were, all within the window: none after it.
    const refusedBeats = beats.filter((b) => !b.isOk);
    expect(refusedBeats.filter((b) => !b.isUnauthenticated)).toEqual([]);
    // Heartbeats carrying the revoked key's tokens were refused while the window ran (it is no grace period).
    expect(refusedBeats.length).toBeGreaterThan(0);
    expect(refusedBeats.filter((b) => b.atMs > windowEndMs)).toEqual([]);
    expect(refusedByServer.filter((r) => r.atMs > windowEndMs)).toEqual([]);
    expect(beats.filter((b) => b.atMs > windowEndMs)).toHaveLength(AGENTS * (heartbeatRounds - roundsAtWindowEnd));

    // The host that was away comes back with its old credential: refused for good, saying why; it must be enrolled again.
    const returning = AgentHost.start({
      target: h.target,
      clock: h.clock,
      logger: h.logs.logger,
      credentialStore: awayStore,
      modules,
      reconnectMinDelayMs: 10,
      reconnectMaxDelayMs: 50,
    });
    extraHosts.push(returning);
    const refused = nextEvent<{ refusal: string; details: string }>(returning.events, 'refused');
    expect(await refused).toMatchObject({ refusal: 'revoked', details: expect.stringMatching(/revoked signing key; enroll the host again/) });
    expect(await returning.done).toMatchObject({ refusal: 'revoked' });
  });
});
