/**
 * Show 5: a partition through a real TCP proxy blackhole. The host's transport
 * keepalive notices (the host counts itself disconnected, so its
 * `tether_host_connected` gauge reads 0); the control plane, whose own
 * keepalive is the default and slow, still thinks the stream is up and issues
 * a rotation into it. ListAgents shows what the host acknowledged holding, not
 * what was sent; the host warns before its token expires; on heal its Hello
 * reports the older generation and the control plane sends a fresh one, which
 * the host acknowledges.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentInfo } from '../../gen/tether/v1/admin.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness } from '../support/harness.js';
import { ScriptedModule } from '../support/scripted-module.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const TTL_MS = 30_000;
const HOST_KEEPALIVE = { keepaliveTimeMs: 1_000, keepaliveTimeoutMs: 1_000 } as const;

describe('a partition', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await proxy?.close();
    proxy = undefined;
  });

  it('shows the generation the host acknowledged, not the one sent into the dead stream, and mends it on heal', async () => {
    harness = await Harness.start({ agentTokenTtlMs: TTL_MS });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;
    const { host, hostId } = await h.startHost('cut', { target: p.target, ...HOST_KEEPALIVE });
    await h.dispatch(host, hostId, 'island');
    const info = async (): Promise<AgentInfo> => {
      const { agents } = await call(h.admin.listAgents.bind(h.admin), { pageSize: 0, pageToken: '', hostId: '' });
      const agent = agents.find((a) => a.agentId === 'island');
      if (agent === undefined) throw new Error('agent not listed');
      return agent;
    };
    await waitUntil(async () => (await info()).ackedGeneration === 1, 'the start credential acknowledged');
    const before = await info();
    expect(before.ackedExpiresAtMs).toBe(before.expiresAtMs);
    expect(before.ackedExpiresAtMs).toBe(host.agentCredential('island')?.expiresAtMs);

    // Cut. The host's keepalive notices; the control plane's does not yet, and rotates into the dead stream.
    const hostNoticed = nextEvent(host.events, 'disconnected');
    p.blackhole();
    await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'island' });
    await hostNoticed;
    expect(host.state).not.toBe('connected');
    const during = await info();
    expect(during.generation).toBe(2);
    expect(during.ackedGeneration).toBe(1);
    expect(during.ackedExpiresAtMs).toBe(before.expiresAtMs);
    expect(host.agentCredential('island')?.generation).toBe(1);

    // Still cut: the host warns while its token still has time left.
    const warnings: number[] = [];
    host.events.on('expiry-warning', (e: { lowestTimeToExpiryMs: number }) => warnings.push(e.lowestTimeToExpiryMs));
    await advanceUntil(h.clock, 500, () => warnings.length > 0, 'the expiry warning');
    const warning = { lowestTimeToExpiryMs: warnings[0] ?? 0 };
    expect(warning.lowestTimeToExpiryMs).toBeGreaterThan(0);
    expect(h.clock.now()).toBeLessThan(before.expiresAtMs);
    expect((await info()).ackedGeneration).toBe(1);

    // Healed: the Hello reports generation 1, so a fresh credential goes down and is acknowledged.
    p.heal();
    await advanceUntil(h.clock, 50, async () => {
      const now = await info();
      return host.state === 'connected' && now.ackedGeneration === now.generation && now.generation > 2;
    }, 'the host reconnected and holding the generation last issued');
    const after = await info();
    expect(host.agentCredential('island')).toEqual({ generation: after.generation, expiresAtMs: after.ackedExpiresAtMs });
    expect(after.ackedExpiresAtMs).toBe(after.expiresAtMs);
  });

  it('gives a host that comes back behind, holding a token past half its life, the fresh one before any message', async () => {
    harness = await Harness.start({ agentTokenTtlMs: TTL_MS });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;
    const scripted = new ScriptedModule();
    const { host, hostId } = await h.startHost('behind', { target: p.target, ...HOST_KEEPALIVE, modules: new Map([['scripted', scripted.module]]) });
    await h.dispatch(host, hostId, 'island', 'scripted');
    const startedAtMs = h.clock.now();
    const held = host.agentCredential('island');
    expect(held?.generation).toBe(1);

    // Cut just short of the held token's half-life, and rotate into the dead stream: the store's token is
    // fresh, the host's is not (and soon past half its life).
    h.clock.advance(TTL_MS * 0.45);
    const hostNoticed = nextEvent(host.events, 'disconnected');
    p.blackhole();
    await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'island' });
    await hostNoticed;
    await call(h.admin.sendMessages.bind(h.admin), {
      agentId: 'island',
      messages: [{ contentType: 'text/plain', payload: Buffer.from('after the partition'), idempotencyKey: '' }],
    });
    h.clock.advance(TTL_MS * 0.1);
    expect(h.clock.now() - startedAtMs).toBeGreaterThan(TTL_MS / 2);
    expect(host.agentCredential('island')?.generation).toBe(1);

    // Healed: the message reaches the agent holding a token issued after the one the dead stream swallowed.
    p.heal();
    await advanceUntil(h.clock, 50, () => scripted.taken('island').includes('after the partition'), 'the message taken after the heal');
    const seen = scripted.of('island').find((r) => r.payload === 'after the partition');
    expect(seen?.generation).toBeGreaterThan(2);
  });
});
