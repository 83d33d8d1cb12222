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
});
