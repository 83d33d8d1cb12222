/**
 * A reconnect storm: 100 hosts, each on a connection of its own (a local
 * subchannel pool per channel, so grpc-js does not share one connection
 * between them), all through one fault proxy, lose the control plane at once
 * and stay cut off until every host's reconnect backoff has reached its cap
 * (its `disconnected` events say so), then come back in time. Every one is
 * back and resumed (its agent kept, not started again), and the control plane
 * answers admin calls throughout. The bound on
 * waiting only catches a hang; the spread of reconnect times is printed, not
 * asserted. The soak does the same with 1,000 hosts (`--storm-hosts`).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness } from '../support/harness.js';
import { waitUntil } from '../support/wait.js';

const HOSTS = 100;
/** Hosts started at once while setting up. */
const SETUP_CONCURRENCY = 20;
/** The hosts' backoff cap (the harness's): 10 ms doubling to 50 ms. */
const RECONNECT_MAX_DELAY_MS = 50;
/** ListHosts calls made during the storm, at most (one per poll while it lasts). */
const MAX_ADMIN_CALLS = 500;

/** min / median / max of `values`, rounded to ms. */
function spread(values: readonly number[]): { min: number; median: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    min: Math.round(sorted[0] ?? Number.NaN),
    median: Math.round(sorted[Math.floor(sorted.length / 2)] ?? Number.NaN),
    max: Math.round(sorted.at(-1) ?? Number.NaN),
  };
}

describe('a reconnect storm', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await proxy?.close();
    proxy = undefined;
  });

  it(`brings all ${HOSTS} hosts back and resumed after they lose the control plane at once, answering admin calls throughout`, async () => {
    harness = await Harness.start();
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;

    const hosts: { host: AgentHost; hostId: string; agentId: string }[] = [];
    for (let start = 0; start < HOSTS; start += SETUP_CONCURRENCY) {
      const batch = Array.from({ length: Math.min(SETUP_CONCURRENCY, HOSTS - start) }, async (_, k) => {
        const i = start + k;
        const { host, hostId } = await h.startHost(`storm-${i}`, { target: p.target, channelOptions: { 'grpc.use_local_subchannel_pool': 1 } });
        const agentId = `storm-agent-${i}`;
        await h.dispatch(host, hostId, agentId);
        return { host, hostId, agentId };
      });
      hosts.push(...(await Promise.all(batch)));
    }
    expect(h.cp.connectedHosts).toBe(HOSTS);
    // One connection per host through the proxy: a shared one would make this no storm at all.
    expect(p.openConnections).toBe(HOSTS);
    const incarnationsBefore = await incarnations(h);

    // From the cut on: who comes back, when, and whether any agent is started again.
    const connectedAfterCut: string[] = [];
    const reconnectMs = new Map<string, number>();
    const agentsStarted: string[] = [];
    h.cp.events.on('host-connected', (e) => connectedAfterCut.push(e.hostId));
    h.cp.events.on('agent-state', (e) => void (e.state === 'starting' && agentsStarted.push(e.agentId)));
    const cutAtMs = performance.now();
    const atCap = new Set<string>();
    const attemptsAtCap: number[] = [];
    for (const { host, hostId } of hosts) {
      host.events.once('connected', () => reconnectMs.set(hostId, performance.now() - cutAtMs));
      host.events.on('agent-started', (e) => agentsStarted.push(e.agentId));
      host.events.on('disconnected', (e) => {
        if (e.capMs === RECONNECT_MAX_DELAY_MS && !atCap.has(hostId)) {
          atCap.add(hostId);
          attemptsAtCap.push(e.attempt);
        }
      });
    }

    // Cut off, and every new connection reset, until each host's backoff has grown to its cap.
    p.refuseNew();
    p.cutAll();
    await advanceUntil(h.clock, 10, () => atCap.size === HOSTS, `all ${HOSTS} hosts' backoff to reach its cap`);
    // 10, 20, 40, then 50 ms: the fourth failed attempt is the first at the cap.
    expect(Math.min(...attemptsAtCap)).toBe(4);
    p.heal();
    // Admin calls go straight to the control plane (not through the proxy) and must be answered while the storm lasts.
    let adminCalls = 0;
    const adminFailures: unknown[] = [];
    let isStormOver = false;
    const admin = (async (): Promise<void> => {
      while (!isStormOver && adminCalls < MAX_ADMIN_CALLS) {
        adminCalls++;
        try {
          const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: 1_000, pageToken: '' });
          expect(listed.hosts).toHaveLength(HOSTS);
        } catch (err) {
          adminFailures.push(err);
        }
      }
    })();
    // The hosts' reconnect backoff sleeps on the fake clock: move it in small steps until every one is back.
    await advanceUntil(
      h.clock,
      10,
      () => new Set(connectedAfterCut).size === HOSTS && hosts.every(({ host }) => host.state === 'connected') && h.cp.connectedHosts === HOSTS,
      `all ${HOSTS} hosts to reconnect`,
    );
    isStormOver = true;
    await admin;

    const times = spread([...reconnectMs.values()]);
    console.log(`reconnect storm: ${HOSTS} hosts back in min ${times.min} ms, median ${times.median} ms, max ${times.max} ms (real time from the cut); ${adminCalls} ListHosts answered during it`);

    // Every host back exactly once, each resumed with its agent, none started again.
    expect(connectedAfterCut).toHaveLength(HOSTS);
    expect(new Set(connectedAfterCut)).toEqual(new Set(hosts.map(({ hostId }) => hostId)));
    expect(reconnectMs.size).toBe(HOSTS);
    expect(agentsStarted).toEqual([]);
    for (const { host, agentId } of hosts) expect(host.agentIds()).toEqual([agentId]);
    expect(await incarnations(h)).toEqual(incarnationsBefore);
    const resumed = h.logs.records().filter((r) => r.msg === 'host connected' && r.running === 1);
    expect(resumed).toHaveLength(HOSTS);
    // The control plane answered throughout.
    expect(adminFailures).toEqual([]);
    expect(adminCalls).toBeGreaterThan(0);
    // Nothing left of the failed attempts: per host its stream's connection and, once its agent has
    // heartbeated (the fake clock moved on while the backoff grew), its agent calls' own channel.
    await waitUntil(() => p.openConnections <= 2 * HOSTS, `at most two proxied connections per host (${p.openConnections} open)`);
  });
});

/** Every agent's incarnation, by id, as the control plane has it. */
async function incarnations(h: Harness): Promise<Map<string, number>> {
  const result = new Map<string, number>();
  let pageToken = '';
  for (let page = 0; page < 100; page++) {
    const listed = await call(h.admin.listAgents.bind(h.admin), { pageSize: 500, pageToken, hostId: '' });
    for (const agent of listed.agents) result.set(agent.agentId, agent.incarnation);
    pageToken = listed.nextPageToken;
    if (pageToken === '') return result;
  }
  throw new Error('more pages of agents than there can be');
}
