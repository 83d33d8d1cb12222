/**
 * `EnsureAgent` on a real control plane and host: an agent ensured again with
 * the same spec is left alone; a different spec is refused, naming the fields,
 * never silently ignored; with `update` the spec is replaced and the agent
 * restarted under a new incarnation whose start fences the old one (its
 * tokens refused). `DescribeAgent` tells the story with a reason per step.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const idle = { kind: 'module', module: 'idle', command: '', args: [], config: '' };
const other = { kind: 'module', module: 'other', command: '', args: [], config: '' };

/** One start of an agent as its module saw it. */
interface Start {
  agentId: string;
  module: string;
  token: string;
}

describe('agents ensure', () => {
  let harness: Harness | undefined;

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  /** A control plane and one host running `idle` and `other` modules that record each start with its token. */
  async function setUp(): Promise<{ h: Harness; host: AgentHost; hostId: string; starts: Start[] }> {
    const h = await Harness.start();
    harness = h;
    const starts: Start[] = [];
    const recording =
      (module: string): AgentModule =>
      (ctx) => {
        starts.push({ agentId: ctx.agentId, module, token: ctx.credentials.get() });
        return {};
      };
    const { host, hostId } = await h.startHost('one', {
      modules: new Map([
        ['idle', recording('idle')],
        ['other', recording('other')],
      ]),
    });
    return { h, host, hostId, starts };
  }

  function ensure(h: Harness, agentId: string, spec: typeof idle, extra: { hostLabels?: { key: string; value: string }[]; update?: boolean } = {}) {
    return call(h.admin.ensureAgent.bind(h.admin), { agentId, name: '', hostId: '', hostLabels: extra.hostLabels ?? [], spec, update: extra.update ?? false });
  }

  async function running(h: Harness, agentId: string, incarnation: number): Promise<void> {
    await waitUntil(async () => {
      const agent = await h.store.getAgent(agentId);
      return agent?.state === 'running' && agent.incarnation === incarnation;
    }, `${agentId} running as incarnation ${incarnation}`);
  }

  it('leaves an agent ensured with the same spec as it is, and refuses a different spec by naming the fields', async () => {
    const { h, host } = await setUp();
    const started = nextEvent(host.events, 'agent-started', (e: { agentId: string }) => e.agentId === 'keeper');
    expect((await ensure(h, 'keeper', idle)).created).toBe(true);
    await started;
    await running(h, 'keeper', 1);

    const again = await ensure(h, 'keeper', idle);
    expect({ created: again.created, updated: again.updated, incarnation: again.agent?.incarnation }).toEqual({ created: false, updated: false, incarnation: 1 });

    const refused = await ensure(h, 'keeper', other, { hostLabels: [{ key: 'zone', value: 'a' }] }).catch((err: unknown) => err as grpc.ServiceError);
    expect(refused).toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    expect((refused as grpc.ServiceError).details).toBe(
      'agent keeper exists with a different spec (differs in spec.module, host_labels); ensure it with --update (update: true) to replace the spec and restart it, or stop it first',
    );
    // Nothing changed: same spec, same incarnation, still running.
    expect(await h.store.getAgent('keeper')).toMatchObject({ state: 'running', incarnation: 1, spec: idle, hostLabels: [] });

    // Ended, it is started again by an ensure with its spec, and still refused with another.
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'keeper', reason: 'for the test' });
    expect(await statusOf(ensure(h, 'keeper', other))).toBe(grpc.status.FAILED_PRECONDITION);
    expect((await h.store.getAgent('keeper'))?.state).toBe('stopped');
    const restarted = await ensure(h, 'keeper', idle);
    expect({ created: restarted.created, updated: restarted.updated }).toEqual({ created: true, updated: false });
    await running(h, 'keeper', 2);
    expect((await h.store.getAgent('keeper'))?.restarts).toBe(1);
  });

  it('with update, replaces the spec and restarts the agent under a new incarnation; the old incarnation\'s tokens are refused', async () => {
    const { h, starts } = await setUp();
    const agentApi = h.agentClient();
    await ensure(h, 'mover', idle);
    await running(h, 'mover', 1);
    const first = starts.find((s) => s.agentId === 'mover');
    expect(first?.module).toBe('idle');
    expect(await statusOf(call(agentApi.whoAmI.bind(agentApi), {}, bearer(first?.token ?? '')))).toBe('ok');

    const updated = await ensure(h, 'mover', other, { update: true });
    expect({ created: updated.created, updated: updated.updated }).toEqual({ created: true, updated: true });
    await running(h, 'mover', 2);
    const second = starts.filter((s) => s.agentId === 'mover')[1];
    expect(second?.module).toBe('other');
    // The old copy's token no longer works; the new one's does.
    expect(await statusOf(call(agentApi.whoAmI.bind(agentApi), {}, bearer(first?.token ?? '')))).toBe(grpc.status.UNAUTHENTICATED);
    expect(await statusOf(call(agentApi.whoAmI.bind(agentApi), {}, bearer(second?.token ?? '')))).toBe('ok');

    // Updating to the spec it has now changes nothing.
    expect((await ensure(h, 'mover', other, { update: true })).updated).toBe(false);
    // An update naming a host that does not exist is refused as a dispatch would be, and changes nothing.
    const noHost = call(h.admin.ensureAgent.bind(h.admin), { agentId: 'mover', name: '', hostId: 'nowhere', hostLabels: [], spec: other, update: true });
    expect(await statusOf(noHost)).toBe(grpc.status.NOT_FOUND);
    expect(await h.store.getAgent('mover')).toMatchObject({ state: 'running', incarnation: 2, requestedHostId: null });

    const described = await call(h.admin.describeAgent.bind(h.admin), { agentId: 'mover' });
    expect(described.agent).toMatchObject({ state: AgentState.AGENT_STATE_RUNNING, incarnation: 2, restarts: 1, spec: other });
    const { RUNNING, PENDING, STARTING, UNSPECIFIED } = {
      RUNNING: AgentState.AGENT_STATE_RUNNING,
      PENDING: AgentState.AGENT_STATE_PENDING,
      STARTING: AgentState.AGENT_STATE_STARTING,
      UNSPECIFIED: AgentState.AGENT_STATE_UNSPECIFIED,
    };
    expect(described.transitions.map((t) => [t.fromState, t.toState, t.incarnation, t.reason])).toEqual([
      [UNSPECIFIED, PENDING, 0, 'created by ensure'],
      [PENDING, STARTING, 1, 'placed on the least loaded host (load 0)'],
      [STARTING, RUNNING, 1, 'its host reported it started'],
      [RUNNING, PENDING, 1, 'spec updated by ensure (spec.module)'],
      [PENDING, STARTING, 2, 'placed on the least loaded host (load 0)'],
      [STARTING, RUNNING, 2, 'its host reported it started'],
    ]);
  });
});
