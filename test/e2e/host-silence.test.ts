/**
 * A link that goes silent without closing (a dead NAT entry, a pulled cable):
 * nothing arrives and no FIN or RST either. Transport keepalive at each end is
 * what notices. It runs on the real clock (grpc-js arms its own timers), so the
 * intervals are short here; the waits below are bounded only by the suite's
 * hang bound, never by those intervals.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AgentState } from '../../gen/tether/v1/common.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const KEEPALIVE = { keepaliveTimeMs: 1_000, keepaliveTimeoutMs: 1_000 } as const;

describe('a silent link', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await proxy?.close();
    proxy = undefined;
  });

  it('is noticed by keepalive at both ends; the host reconnects once it heals and resumes its agent', async () => {
    harness = await Harness.start({ ...KEEPALIVE });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;
    const { host, hostId } = await h.startHost('quiet', { target: p.target, ...KEEPALIVE });
    await h.dispatch(host, hostId, 'hush');
    await waitUntil(async () => {
      const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId: 'hush' });
      return agent?.state === AgentState.AGENT_STATE_RUNNING;
    }, 'the agent running on the control plane');
    const stopped: string[] = [];
    host.events.on('agent-stopped', (e) => stopped.push(e.agentId));
    const connectsBefore = p.acceptedConnections;

    // Silence. The fake clock does not move, so no app-level Ping crosses either; only keepalive can tell.
    const hostNoticed = nextEvent(host.events, 'disconnected');
    const controlPlaneNoticed = nextEvent<{ hostId: string }>(h.cp.events, 'host-disconnected', (e) => e.hostId === hostId);
    p.blackhole();
    await Promise.all([hostNoticed, controlPlaneNoticed]);
    expect(h.cp.connectedHosts).toBe(0);
    expect(host.state).toBe('connecting');
    expect(host.agentIds()).toEqual(['hush']);

    // Healed: the host's next attempt (its backoff sleeps on the fake clock) gets through and resumes.
    p.heal();
    const reconnected = nextEvent<{ hostId: string }>(h.cp.events, 'host-connected', (e) => e.hostId === hostId);
    await advanceUntil(h.clock, 50, () => host.state === 'connected' && h.cp.connectedHosts === 1, 'the host to reconnect');
    await reconnected;
    expect(p.acceptedConnections).toBeGreaterThan(connectsBefore);
    const hellos = h.logs.records().filter((r) => r.msg === 'host connected' && r.hostId === hostId);
    expect(hellos.map((r) => r.running)).toEqual([0, 1]);
    const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId: 'hush' });
    expect(agent?.incarnation).toBe(1);
    expect(agent?.state).toBe(AgentState.AGENT_STATE_RUNNING);
    expect(stopped).toEqual([]);

    // And the resumed agent works through the healed link.
    const beat = nextEvent<{ agentId: string; isOk: boolean }>(host.events, 'heartbeat', (e) => e.agentId === 'hush');
    h.clock.advance(3_000);
    expect((await beat).isOk).toBe(true);
  });
});
