/**
 * Signing key rotation under live agents: the new key is published before any
 * token carries it, the retired key keeps verifying until the last token it
 * signed has expired, then leaves the JWKS; no heartbeat fails on the way.
 */
import { decodeProtectedHeader } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
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
      const { jwksJson } = await call(h.admin.getJwks.bind(h.admin), {});
      return (JSON.parse(jwksJson) as { keys: { kid: string }[] }).keys.map((key) => key.kid).sort();
    };
    const agentApi = h.agentClient();
    const heartbeatWith = (agentId: string, token: string): Promise<unknown> =>
      statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId }, bearer(token)));

    const oldToken = tokenOf('kr-1');
    const oldKid = kidOf(oldToken);
    expect(await jwksKids()).toEqual([oldKid]);

    // Rotate. The new key is in the JWKS by the time the call returns, before any token carries it.
    const rotatedAtMs = h.clock.now();
    const rotated = await call(h.admin.rotateSigningKey.bind(h.admin), {});
    expect(rotated.retiredKeyId).toBe(oldKid);
    expect(rotated.keyId).not.toBe(oldKid);
    expect(rotated.retiredVerifyUntilMs).toBe(rotatedAtMs + HOST_TTL_MS + CLOCK_TOLERANCE_MS);
    expect(await jwksKids()).toEqual([oldKid, rotated.keyId].sort());
    const { keys } = await call(h.admin.listSigningKeys.bind(h.admin), {});
    expect(keys.find((k) => k.keyId === oldKid)).toMatchObject({ retiredAtMs: rotatedAtMs, verifyUntilMs: rotated.retiredVerifyUntilMs });
    expect(keys.find((k) => k.keyId === rotated.keyId)).toMatchObject({ retiredAtMs: 0, verifyUntilMs: 0 });

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
    const steps = Math.ceil((rotated.retiredVerifyUntilMs - h.clock.now()) / HEARTBEAT_MS);
    for (let step = 1; step <= steps; step++) {
      h.clock.advance(HEARTBEAT_MS);
      const nowMs = h.clock.now();
      await waitUntil(
        () => AGENT_IDS.every((agentId) => beats.some((b) => b.agentId === agentId && b.atMs === nowMs)),
        `every agent's heartbeat at step ${step}`,
      );
      await waitUntil(() => h.cp.isSettled(), `the control plane settled at step ${step}`);
    }
    expect(h.clock.now()).toBeGreaterThanOrEqual(rotated.retiredVerifyUntilMs);

    // Every heartbeat succeeded, those carrying the old kid during the overlap included.
    expect(beats.length).toBeGreaterThanOrEqual(steps * AGENT_IDS.length);
    expect(beats.filter((b) => !b.isOk)).toEqual([]);

    // The old key is gone from the JWKS; every credential in use carries the new one.
    expect(await jwksKids()).toEqual([rotated.keyId]);
    for (const agentId of AGENT_IDS) expect(kidOf(tokenOf(agentId))).toBe(rotated.keyId);
    const hostCredential = await hostStore.load();
    expect(hostCredential === undefined ? undefined : kidOf(hostCredential.token)).toBe(rotated.keyId);
    expect(await heartbeatWith('kr-1', oldToken)).not.toBe('ok');
    for (const agentId of AGENT_IDS) expect(await heartbeatWith(agentId, tokenOf(agentId))).toBe('ok');
  });
});
