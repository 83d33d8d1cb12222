/**
 * Placement on real hosts through the real AdminService: capacity is reserved
 * by a conditional write in the store, so dispatches that race (each reads the
 * host's load, then places) never put more agents on a host than it offered;
 * labels steer agents to the hosts that carry them.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentRecord } from '../../control-plane/store/store.js';
import { LIVE_AGENT_STATES } from '../../control-plane/store/store.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { call, Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const spec = { kind: 'module', module: 'idle', command: '', args: [], config: '' };

describe('placement', () => {
  let harness: Harness | undefined;

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  async function allAgents(h: Harness): Promise<AgentRecord[]> {
    return (await h.store.listAgents({}, null, 1_000)).items;
  }

  it('never puts more agents on a host than its capacity, however many dispatches race for it', async () => {
    harness = await Harness.start();
    const h = harness;
    const DISPATCHES = 50;
    const { hostId: small } = await h.startHost('small', { capacity: 3 });
    const { hostId: medium } = await h.startHost('medium', { capacity: 4 });
    const answers = await Promise.all(
      Array.from({ length: DISPATCHES }, (_, i) =>
        call(h.admin.dispatchAgent.bind(h.admin), { agentId: `racer-${String(i).padStart(2, '0')}`, name: '', hostId: '', hostLabels: [], spec }),
      ),
    );
    expect(answers).toHaveLength(DISPATCHES);
    const agents = await allAgents(h);
    const live = (hostId: string): AgentRecord[] => agents.filter((a) => a.hostId === hostId && LIVE_AGENT_STATES.includes(a.state));
    expect(live(small)).toHaveLength(3);
    expect(live(medium)).toHaveLength(4);
    expect(agents.filter((a) => a.state === 'pending')).toHaveLength(DISPATCHES - 7);
    const loads = await h.store.getHostLoads([small, medium]);
    expect([loads.get(small)?.load, loads.get(medium)?.load]).toEqual([3, 4]);
    // Each waiting agent says why (which ones wait depends on how the race went: on PostgreSQL the dispatches run at once).
    expect(new Set(agents.filter((a) => a.state === 'pending').map((a) => a.detail))).toEqual(new Set(['no connected host can take it (2 full)']));
  });

  it('gives a place given back to a pending agent at once, and never more than the capacity', async () => {
    harness = await Harness.start();
    const h = harness;
    const CAPACITY = 3;
    const { host, hostId } = await h.startHost('small', { capacity: CAPACITY });
    for (let i = 0; i < CAPACITY + 2; i++) {
      await call(h.admin.dispatchAgent.bind(h.admin), { agentId: `a${i}`, name: '', hostId: '', hostLabels: [], spec });
    }
    expect((await allAgents(h)).filter((a) => a.state === 'pending').map((a) => a.agentId)).toEqual(['a3', 'a4']);
    // A dispatch named for the full host waits too, saying why.
    await call(h.admin.dispatchAgent.bind(h.admin), { agentId: 'named', name: '', hostId, hostLabels: [], spec });
    expect(await h.store.getAgent('named')).toMatchObject({ state: 'pending', detail: `host ${hostId} is full (3 of 3 agents)` });

    // A stop frees a place: the first pending agent takes it, with nothing else happening (no Hello, no dispatch).
    const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === 'a3');
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'a0', reason: '' });
    await started;
    await waitUntil(async () => (await h.store.getAgent('a3'))?.state === 'running', 'a3 running');
    expect((await allAgents(h)).filter((a) => a.hostId === hostId && LIVE_AGENT_STATES.includes(a.state)).map((a) => a.agentId)).toEqual(['a1', 'a2', 'a3']);
    expect((await h.store.getHostLoads([hostId])).get(hostId)?.load).toBe(CAPACITY);
    const history = await h.store.listAgentTransitions('a3', 50);
    expect(history.map((t) => [t.fromState, t.toState, t.reason])).toEqual([
      [null, 'pending', 'dispatched'],
      ['pending', 'starting', 'placed on the least loaded host (load 2)'],
      ['starting', 'running', 'its host reported it started'],
    ]);

    // The next stop: the next pending agent in line (the named one still waits, its host full again).
    const startedNext = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === 'a4');
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'a1', reason: '' });
    await startedNext;
    expect((await h.store.getAgent('named'))?.state).toBe('pending');
    expect((await h.store.getHostLoads([hostId])).get(hostId)?.load).toBe(CAPACITY);
  });

  it('places a pending agent as soon as a host that fits connects', async () => {
    harness = await Harness.start();
    const h = harness;
    await h.startHost('plain');
    const gpu = [{ key: 'gpu', value: 'yes' }];
    const { agent } = await call(h.admin.dispatchAgent.bind(h.admin), { agentId: 'wants-gpu', name: '', hostId: '', hostLabels: gpu, spec });
    expect(agent).toMatchObject({ state: AgentState.AGENT_STATE_PENDING, hostId: '', detail: 'no connected host carries gpu=yes' });
    // The fake clock never moves: only the host's arrival places it.
    const { host, hostId } = await h.startHost('gpu', { labels: gpu });
    await waitUntil(async () => (await h.store.getAgent('wants-gpu'))?.state === 'running', 'the agent running on the GPU host');
    expect(host.agentIds()).toContain('wants-gpu');
    expect((await h.store.getAgent('wants-gpu'))?.hostId).toBe(hostId);
  });

  it('places by label among hosts with room, least loaded first', async () => {
    harness = await Harness.start();
    const h = harness;
    const { hostId: gpuA } = await h.startHost('gpu-a', { labels: [{ key: 'gpu', value: 'yes' }], capacity: 1 });
    const { hostId: gpuB } = await h.startHost('gpu-b', { labels: [{ key: 'gpu', value: 'yes' }], capacity: 1 });
    const { hostId: plain } = await h.startHost('plain', { capacity: 0 });
    const dispatch = (agentId: string, labels: { key: string; value: string }[]) =>
      call(h.admin.dispatchAgent.bind(h.admin), { agentId, name: '', hostId: '', hostLabels: labels, spec });
    const gpu = [{ key: 'gpu', value: 'yes' }];
    const placed = [await dispatch('g1', gpu), await dispatch('g2', gpu), await dispatch('g3', gpu)].map((r) => r.agent?.hostId ?? '');
    // One on each GPU host (the emptier first), then none: the plain host, with room, does not carry the label.
    expect(placed.slice(0, 2).sort()).toEqual([gpuA, gpuB].sort());
    expect((await h.store.getAgent('g3'))?.state).toBe('pending');
    expect((await dispatch('p1', [])).agent?.hostId).toBe(plain);
  });
});
