/**
 * Placement on real hosts through the real AdminService: capacity is reserved
 * by a conditional write in the store, so dispatches that race (each reads the
 * host's load, then places) never put more agents on a host than it offered;
 * labels steer agents to the hosts that carry them.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentRecord } from '../../control-plane/store/store.js';
import { LIVE_AGENT_STATES } from '../../control-plane/store/store.js';
import { call, Harness } from '../support/harness.js';

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
    const CAPACITY = 3;
    const DISPATCHES = 24;
    const { hostId } = await h.startHost('small', { capacity: CAPACITY });
    const answers = await Promise.all(
      Array.from({ length: DISPATCHES }, (_, i) =>
        call(h.admin.dispatchAgent.bind(h.admin), { agentId: `racer-${i}`, name: '', hostId: '', hostLabels: [], spec }),
      ),
    );
    expect(answers).toHaveLength(DISPATCHES);
    const agents = await allAgents(h);
    const onHost = agents.filter((a) => a.hostId === hostId && LIVE_AGENT_STATES.includes(a.state));
    expect(onHost).toHaveLength(CAPACITY);
    expect(agents.filter((a) => a.state === 'pending')).toHaveLength(DISPATCHES - CAPACITY);
    expect((await h.store.getHostLoads([hostId])).get(hostId)?.load).toBe(CAPACITY);

    // A place given back is a place again: a stop frees one, and the next dispatch named for the host takes it.
    const [first] = onHost;
    if (first === undefined) throw new Error('no agent on the host');
    await call(h.admin.stopAgent.bind(h.admin), { agentId: first.agentId, reason: '' });
    const [again, refused] = await Promise.all([
      call(h.admin.dispatchAgent.bind(h.admin), { agentId: 'named-1', name: '', hostId, hostLabels: [], spec }),
      call(h.admin.dispatchAgent.bind(h.admin), { agentId: 'named-2', name: '', hostId, hostLabels: [], spec }),
    ]);
    const placedNamed = [again.agent, refused.agent].filter((a) => a?.hostId === hostId && a.incarnation > 0);
    expect(placedNamed).toHaveLength(1);
    expect((await allAgents(h)).filter((a) => a.hostId === hostId && LIVE_AGENT_STATES.includes(a.state))).toHaveLength(CAPACITY);
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
