/**
 * Signing key rotation under live agents: the standby promoted has been in the
 * JWKS longer than the JWKS cache lifetime before any token carries it, the retired key keeps verifying until the last token it
 * signed has expired, then leaves the JWKS; no heartbeat fails on the way.
 */
import { decodeProtectedHeader } from 'jose';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { JWKS_MAX_AGE_MS } from '../../control-plane/tokens/signing-keys.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const AGENT_TTL_MS = 60_000;
const HOST_TTL_MS = 120_000;
const CLOCK_TOLERANCE_MS = 30_000;
const HEARTBEAT_MS = 3_000;
const AGENT_IDS = ['kr-1', 'kr-2'] as const;

describe('signing key rotation', () => {
  let harness: Harness | undefined;

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('verifies old and new kid during the overlap, drops the old one from the JWKS once its last token expired, and never fails a heartbeat', async () => {
    harness = await Harness.start({
      agentTokenTtlMs: AGENT_TTL_MS,
      hostTokenTtlMs: HOST_TTL_MS,
      clockToleranceMs: CLOCK_TOLERANCE_MS,
      heartbeatIntervalMs: HEARTBEAT_MS,
    });
    const h = harness;
    const credentials = new Map<string, ReadOnlyCredentials>();
    const grab: AgentModule = (context) => {
      credentials.set(context.agentId, context.credentials);
      return {};
    };
    const hostStore = new MemoryHostCredentialStore();
    const { host, hostId } = await h.startHost('keyed', { credentialStore: hostStore, modules: new Map([['grab', grab]]) });
    for (const agentId of AGENT_IDS) await h.dispatch(host, hostId, agentId, 'grab');
    const beats: { agentId: string; isOk: boolean; atMs: number }[] = [];
    host.events.on('heartbeat', (e) => beats.push({ agentId: e.agentId, isOk: e.isOk, atMs: h.clock.now() }));
    const tokenOf = (agentId: string): string => {
      const source = credentials.get(agentId);
      if (source === undefined) throw new Error(`no credentials for ${agentId}`);
      return source.get();
    };
    const kidOf = (token: string): string | undefined => decodeProtectedHeader(token).kid;
    const jwksKids = async (): Promise<string[]> => {
      const { keys } = await call(h.admin.getJwks.bind(h.admin), {});
      return keys.map((key) => key.kid).sort();
    };
    const agentApi = h.agentClient();
    const heartbeatWith = (agentId: string, token: string): Promise<unknown> =>
      statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId }, bearer(token)));

    // When each kid was first served in the JWKS, as a service polling it at every step would see it.
    const firstServedMs = new Map<string, number>();
    const observeJwks = async (): Promise<void> => {
      for (const kid of await jwksKids()) if (!firstServedMs.has(kid)) firstServedMs.set(kid, h.clock.now());
    };
    /** Moves the clock one heartbeat interval at a time up to `untilMs`, every agent heartbeating at each step. */
    const walk = async (untilMs: number, what: string): Promise<number> => {
      const steps = Math.ceil((untilMs - h.clock.now()) / HEARTBEAT_MS);
      for (let step = 1; step <= steps; step++) {
        h.clock.advance(HEARTBEAT_MS);
        const nowMs = h.clock.now();
        await waitUntil(
          () => AGENT_IDS.every((agentId) => beats.some((b) => b.agentId === agentId && b.atMs === nowMs)),
          `every agent's heartbeat at step ${step} (${what})`,
        );
        await waitUntil(() => h.cp.isSettled(), `the control plane settled at step ${step} (${what})`);
        await observeJwks();
      }
      return steps;
    };

    const oldToken = tokenOf('kr-1');
    const oldKid = kidOf(oldToken);
    const initial = await call(h.admin.listSigningKeys.bind(h.admin), {});
    const standbyKid = initial.keys.find((k) => k.state === 'standby')?.keyId;
    expect(initial.keys.find((k) => k.state === 'signing')?.keyId).toBe(oldKid);
    // The standby is published from the start, beside the signer.
    expect(await jwksKids()).toEqual([oldKid, standbyKid].sort());
    await observeJwks();

    // Too early: the standby has not been in the JWKS longer than its cache lifetime.
    expect(await statusOf(call(h.admin.rotateSigningKey.bind(h.admin), {}))).toBe(grpc.status.FAILED_PRECONDITION);
    let steps = await walk(h.clock.now() + JWKS_MAX_AGE_MS + 1, 'the standby ages');

    // Rotate: the standby signs from now, having been in the JWKS longer than the JWKS cache lifetime.
    const rotatedAtMs = h.clock.now();
    const rotated = await call(h.admin.rotateSigningKey.bind(h.admin), {});
    expect(rotated.retiredKeyId).toBe(oldKid);
    expect(rotated.keyId).toBe(standbyKid);
    expect(rotatedAtMs - (firstServedMs.get(rotated.keyId) ?? Infinity)).toBeGreaterThan(JWKS_MAX_AGE_MS);
    expect(rotated.retiredVerifyUntilMs).toBe(rotatedAtMs + HOST_TTL_MS + CLOCK_TOLERANCE_MS);
    expect(await jwksKids()).toEqual([oldKid, rotated.keyId, rotated.standbyKeyId].sort());
    const { keys } = await call(h.admin.listSigningKeys.bind(h.admin), {});
    expect(keys.find((k) => k.keyId === oldKid)).toMatchObject({ state: 'verifying-only', retiredAtMs: rotatedAtMs, verifyUntilMs: rotated.retiredVerifyUntilMs });
    expect(keys.find((k) => k.keyId === rotated.keyId)).toMatchObject({ state: 'signing', signingSinceMs: rotatedAtMs, retiredAtMs: 0, verifyUntilMs: 0 });
    expect(keys.find((k) => k.keyId === rotated.standbyKeyId)).toMatchObject({ state: 'standby', createdAtMs: rotatedAtMs, signingSinceMs: 0 });

    // Overlap: a token signed before the rotation still works; a fresh one carries the new kid and works too.
    expect(await heartbeatWith('kr-1', oldToken)).toBe('ok');
    const applied = nextEvent<{ agentId: string; generation: number }>(host.events, 'rotation-applied', (e) => e.agentId === 'kr-1');
    await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'kr-1' });
    await applied;
    expect(kidOf(tokenOf('kr-1'))).toBe(rotated.keyId);
    expect(await heartbeatWith('kr-1', tokenOf('kr-1'))).toBe('ok');
    expect(await heartbeatWith('kr-1', oldToken)).toBe('ok');
    expect(kidOf(tokenOf('kr-2'))).toBe(oldKid);

    // Walk the clock past the retired key's verify-until, one heartbeat interval at a time.
    steps += await walk(rotated.retiredVerifyUntilMs, 'the retired key verifies');
    await waitUntil(async () => !(await jwksKids()).includes(oldKid ?? ''), 'the retired key pruned');
    expect(h.clock.now()).toBeGreaterThanOrEqual(rotated.retiredVerifyUntilMs);

    // Every heartbeat succeeded, those carrying the old kid during the overlap included.
    expect(beats.length).toBeGreaterThanOrEqual(steps * AGENT_IDS.length);
    expect(beats.filter((b) => !b.isOk)).toEqual([]);

    // The old key is gone from the JWKS; every credential in use carries the new one.
    expect(await jwksKids()).toEqual([rotated.keyId, rotated.standbyKeyId].sort());
    expect((await h.store.listSigningKeys()).map((k) => k.kid)).not.toContain(oldKid);
    for (const agentId of AGENT_IDS) expect(kidOf(tokenOf(agentId))).toBe(rotated.keyId);
    const hostCredential = await hostStore.load();
    expect(hostCredential === undefined ? undefined : kidOf(hostCredential.token)).toBe(rotated.keyId);
    expect(await heartbeatWith('kr-1', oldToken)).not.toBe('ok');
    for (const agentId of AGENT_IDS) expect(await heartbeatWith(agentId, tokenOf(agentId))).toBe('ok');
  });
});
