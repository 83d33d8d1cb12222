/**
 * A control plane restarted on the same data directory: the host, which
 * reaches it through a proxy (one stable address across the restart), keeps
 * its agents and their tokens while it is down, resumes them when it is back,
 * and every credential that fell due in between is replaced.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const AGENT_TTL_MS = 60_000;
const HOST_TTL_MS = 90_000;
/** Longer than a third of the host TTL and than the latest agent rotation point (60 % of its TTL); shorter than either TTL. */
const DOWNTIME_MS = 40_000;
const AGENT_IDS = ['keep-a', 'keep-b'] as const;

describe('control plane restart', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await proxy?.close();
    proxy = undefined;
  });

  it('leaves agents running with their tokens, resumes them without a new incarnation, and replaces what came due', async () => {
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, hostTokenTtlMs: HOST_TTL_MS });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;

    const credentials = new Map<string, ReadOnlyCredentials>();
    const grab: AgentModule = (context) => {
      credentials.set(context.agentId, context.credentials);
      return {};
    };
    const { host, hostId } = await h.startHost('survivor', { target: p.target, modules: new Map([['grab', grab]]) });
    for (const agentId of AGENT_IDS) await h.dispatch(host, hostId, agentId, 'grab');
    await waitUntil(async () => {
      const listed = await call(h.admin.listAgents.bind(h.admin), { pageSize: 0, pageToken: '', hostId });
      return listed.agents.filter((a) => a.state === AgentState.AGENT_STATE_RUNNING).length === AGENT_IDS.length;
    }, 'both agents running on the control plane');
    const stopped: string[] = [];
    const started: string[] = [];
    host.events.on('agent-stopped', (e) => stopped.push(e.agentId));
    host.events.on('agent-started', (e) => started.push(e.agentId));
    const hostCredentials: number[] = [];
    host.events.on('host-credential', (e) => hostCredentials.push(e.generation));
    const tokenOf = (agentId: string): string => {
      const source = credentials.get(agentId);
      if (source === undefined) throw new Error(`no credentials for ${agentId}`);
      return source.get();
    };
    const tokensBefore = new Map(AGENT_IDS.map((id) => [id, tokenOf(id)]));

    // Down: the host notices and keeps trying; time passes while nothing can be rotated.
    const lost = nextEvent(host.events, 'disconnected');
    await h.stopControlPlane();
    await lost;
    h.clock.advance(DOWNTIME_MS);
    for (const agentId of AGENT_IDS) {
      // Still held, still the same token, and still within its life.
      expect(tokenOf(agentId)).toBe(tokensBefore.get(agentId));
      expect(host.agentCredential(agentId)?.generation).toBe(1);
    }
    expect(host.agentIds().sort()).toEqual([...AGENT_IDS].sort());

    // Back, on the same data directory and a new port; the proxy keeps the host's address.
    await h.startControlPlane();
    const cp = h.cp;
    const issued: { agentId: string; generation: number }[] = [];
    cp.events.on('credential-issued', (e) => issued.push({ agentId: e.agentId, generation: e.generation }));
    const agentStates: { agentId: string; state: string }[] = [];
    cp.events.on('agent-state', (e) => agentStates.push({ agentId: e.agentId, state: e.state }));
    p.setTarget(cp.port);
    await advanceUntil(h.clock, 50, () => host.state === 'connected' && cp.connectedHosts === 1, 'the host to reconnect');

    // Every credential that came due is replaced: both agents' and the host's own.
    await waitUntil(
      () => AGENT_IDS.every((id) => (host.agentCredential(id)?.generation ?? 0) >= 2) && hostCredentials.length > 0,
      'rotated agent and host credentials on the host',
    );
    const agentApi = h.agentClient();
    for (const agentId of AGENT_IDS) {
      expect(tokenOf(agentId)).not.toBe(tokensBefore.get(agentId));
      expect(await statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId }, bearer(tokenOf(agentId))))).toBe('ok');
    }
    expect(hostCredentials[0]).toBe(2);
    const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: 0, pageToken: '' });
    expect(listed.hosts.find((x) => x.hostId === hostId)?.credentialGeneration).toBe(hostCredentials[hostCredentials.length - 1]);

    // Resumed, not restarted: the host reported both agents in Hello.running, and they kept their incarnation.
    const hellos = h.logs.records().filter((r) => r.msg === 'host connected' && r.hostId === hostId);
    expect(hellos.map((r) => r.running)).toEqual([0, AGENT_IDS.length]);
    for (const agentId of AGENT_IDS) {
      const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId });
      expect(agent?.incarnation).toBe(1);
      expect(agent?.state).toBe(AgentState.AGENT_STATE_RUNNING);
      expect(agent?.hostId).toBe(hostId);
    }
    expect(started).toEqual([]);
    expect(stopped).toEqual([]);
    expect(agentStates).toEqual([]);
    expect(issued.filter((e) => e.agentId !== '').every((e) => e.generation === 2)).toBe(true);
  });
});
