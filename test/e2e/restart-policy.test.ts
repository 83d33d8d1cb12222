/**
 * Restart policies on a real control plane and hosts, time on the shared fake
 * clock: an agent that crashes on start is started again after 1 s, 2 s, 4 s,
 * 8 s and then left `failed` as a crash loop with its last error in
 * `describe`; `never` is not restarted; an operator stop is never undone; a
 * restart scheduled before a control-plane restart still happens after it;
 * a process agent that ran healthy for the healthy period starts its budget
 * afresh.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { DEFAULT_RESTART_BUDGET } from '../../control-plane/agents/restart-policy.js';
import type { AgentRecord } from '../../control-plane/store/store.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { call, Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const NODE = process.execPath;
const FIXTURE = fileURLToPath(new URL('../support/process-agent-fixture.mjs', import.meta.url));
const crasherSpec = { kind: 'module', module: 'crasher', command: '', args: [], config: '' };

describe('restart policy', () => {
  let harness: Harness | undefined;
  const dirs: string[] = [];

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  /** A control plane and a host whose `crasher` module throws at every start, counting them. */
  async function setUp(): Promise<{ h: Harness; starts: () => number; nudge: () => Promise<void> }> {
    const h = await Harness.start();
    harness = h;
    let starts = 0;
    const crasher: AgentModule = () => {
      starts++;
      throw new Error(`boom ${starts}`);
    };
    const { host, hostId } = await h.startHost('one', {
      modules: new Map<string, AgentModule>([
        ['crasher', crasher],
        ['idle', () => ({})],
      ]),
    });
    let nudges = 0;
    /**
     * Makes the control plane try to place every pending agent now (an agent
     * that ends frees room, which starts a placement sweep) and waits for that
     * sweep: an agent placed in it would be started before its restart time.
     */
    const nudge = async (): Promise<void> => {
      const agentId = `nudge-${++nudges}`;
      await h.dispatch(host, hostId, agentId, 'idle');
      await call(h.admin.stopAgent.bind(h.admin), { agentId, reason: '' });
      await waitUntil(() => h.cp.isSettled(), 'the placement sweep done');
    };
    return { h, starts: () => starts, nudge };
  }

  async function agentOf(h: Harness, agentId: string): Promise<AgentRecord> {
    const agent = await h.store.getAgent(agentId);
    if (agent === undefined) throw new Error(`no agent ${agentId}`);
    return agent;
  }

  /** Waits until `agentId` has ended `failures` times in a row and is pending its restart; returns how long it waits. */
  async function restartDelay(h: Harness, agentId: string, failures: number): Promise<number> {
    await waitUntil(async () => {
      const agent = await agentOf(h, agentId);
      return agent.failures === failures && agent.state === 'pending';
    }, `${agentId} pending after failure ${failures}`);
    const agent = await agentOf(h, agentId);
    return agent.restartAtMs - h.clock.now();
  }

  it('restarts an agent that crashes on start with growing delays, then leaves it failed as a crash loop with its last error', async () => {
    const { h, starts, nudge } = await setUp();
    await call(h.admin.dispatchAgent.bind(h.admin), { agentId: 'looper', name: '', hostId: '', hostLabels: [], spec: crasherSpec, restartPolicy: 'on-failure' });

    const delays: number[] = [];
    for (let failures = 1; failures < DEFAULT_RESTART_BUDGET.maxFailures; failures++) {
      const delayMs = await restartDelay(h, 'looper', failures);
      delays.push(delayMs);
      expect(starts()).toBe(failures);
      expect(h.cp.restartsWaiting).toBe(1);
      // Not a moment early, though a placement sweep runs just before its time.
      h.clock.advance(delayMs - 1);
      await nudge();
      expect(starts()).toBe(failures);
      expect((await agentOf(h, 'looper')).state).toBe('pending');
      h.clock.advance(1);
    }
    expect(delays).toEqual([1_000, 2_000, 4_000, 8_000]);

    await waitUntil(async () => (await agentOf(h, 'looper')).state === 'failed', 'looper failed for good');
    const looper = await agentOf(h, 'looper');
    expect(looper).toMatchObject({ failures: 5, restarts: 4, restartAtMs: 0 });
    expect(looper.lastError).toMatch(/^crash loop: ended 5 times in a row .*restart policy on-failure.*last failed: boom 5$/);
    expect(h.cp.restartsWaiting).toBe(0);

    // Never again, however much time passes.
    h.clock.advance(60 * 60_000);
    await waitUntil(() => h.cp.isSettled(), 'the control plane settled');
    expect(starts()).toBe(5);
    expect((await agentOf(h, 'looper')).state).toBe('failed');

    // `describe` shows the loop: its last error, and a reason per restart.
    const described = await call(h.admin.describeAgent.bind(h.admin), { agentId: 'looper' });
    expect(described.agent).toMatchObject({ state: AgentState.AGENT_STATE_FAILED, restarts: 4, restartPolicy: 'on-failure', failures: 5 });
    expect(described.agent?.lastError).toContain('crash loop');
    const reasons = described.transitions.map((t) => t.reason);
    expect(reasons.filter((r) => /^failed: boom \d; restart \d of at most 4 in \d+ ms/.test(r))).toEqual([
      'failed: boom 1; restart 1 of at most 4 in 1000 ms (restart policy on-failure)',
      'failed: boom 2; restart 2 of at most 4 in 2000 ms (restart policy on-failure)',
      'failed: boom 3; restart 3 of at most 4 in 4000 ms (restart policy on-failure)',
      'failed: boom 4; restart 4 of at most 4 in 8000 ms (restart policy on-failure)',
    ]);
  });

  it('never restarts an agent whose policy is never (the dispatch default), nor one the operator stopped while it waited', async () => {
    const { h, starts } = await setUp();
    const ended = nextEvent<{ agentId: string; state: string }>(h.cp.events, 'agent-state', (e) => e.agentId === 'once' && e.state === 'failed');
    await call(h.admin.dispatchAgent.bind(h.admin), { agentId: 'once', name: '', hostId: '', hostLabels: [], spec: crasherSpec });
    await ended;
    expect(await agentOf(h, 'once')).toMatchObject({ state: 'failed', restartPolicy: 'never', lastError: 'boom 1', restarts: 0, restartAtMs: 0 });
    expect(h.cp.restartsWaiting).toBe(0);

    await call(h.admin.dispatchAgent.bind(h.admin), { agentId: 'halted', name: '', hostId: '', hostLabels: [], spec: crasherSpec, restartPolicy: 'always' });
    expect(await restartDelay(h, 'halted', 1)).toBe(1_000);
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'halted', reason: '' });
    expect(h.cp.restartsWaiting).toBe(0);

    h.clock.advance(60 * 60_000);
    await waitUntil(() => h.cp.isSettled(), 'the control plane settled');
    expect(starts()).toBe(2);
    expect(await agentOf(h, 'once')).toMatchObject({ state: 'failed', restarts: 0 });
    expect(await agentOf(h, 'halted')).toMatchObject({ state: 'stopped', restarts: 0 });
  });

  it('keeps a scheduled restart across a control-plane restart', async () => {
    const { h, starts } = await setUp();
    await call(h.admin.dispatchAgent.bind(h.admin), { agentId: 'phoenix', name: '', hostId: '', hostLabels: [], spec: crasherSpec, restartPolicy: 'on-failure' });
    expect(await restartDelay(h, 'phoenix', 1)).toBe(1_000);
    for (const host of h.hosts.splice(0)) await host.close();
    await h.stopControlPlane();

    await h.startControlPlane();
    await waitUntil(() => h.cp.restartsWaiting === 1, 'the restart armed again from the store');
    const host = await h.startHost('two', { modules: new Map([['crasher', (): never => {
      throw new Error('boom again');
    }]]) });
    expect(host.hostId).not.toBe('');
    h.clock.advance(1_000);
    // Started at its time on the host that connected, and failed again: the count goes on from the store.
    expect(await restartDelay(h, 'phoenix', 2)).toBe(2_000);
    expect(starts()).toBe(1);
    expect((await agentOf(h, 'phoenix')).lastError).toBe('boom again');
  });

  it('forgives earlier failures once the agent has run for the healthy period (a real process that crashes)', async () => {
    const h = await Harness.start();
    harness = h;
    const agentsDir = join(mkdtempSync(join(tmpdir(), 'tether-restart-')), 'agents');
    dirs.push(join(agentsDir, '..'));
    const { host } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: 10_000 });
    await call(h.admin.ensureAgent.bind(h.admin), {
      agentId: 'worker',
      name: '',
      hostId: '',
      hostLabels: [],
      spec: { kind: 'process', module: '', command: NODE, args: [FIXTURE], config: '' },
      update: false,
    });
    // Created by ensure without --restart: on-failure.
    expect((await agentOf(h, 'worker')).restartPolicy).toBe('on-failure');

    let sent = 0;
    /** Waits for the incarnation to run, then has it crash (exit 3) and returns the delay of the restart that follows. */
    const crash = async (incarnation: number, failures: number): Promise<number> => {
      await waitUntil(async () => {
        const agent = await agentOf(h, 'worker');
        return agent.state === 'running' && agent.incarnation === incarnation && host.agentIds().includes('worker');
      }, `worker running as incarnation ${incarnation}`);
      await waitUntil(() => existsSync(join(agentsDir, 'worker', 'ready')), 'worker ready');
      sent++;
      const acked = nextEvent<{ agentId: string; seq: number }>(h.cp.events, 'message-acked', (e) => e.agentId === 'worker' && e.seq === sent);
      await call(h.admin.sendMessages.bind(h.admin), {
        agentId: 'worker',
        messages: [{ contentType: 'text/plain', payload: Buffer.from('exit 3'), idempotencyKey: '' }],
      });
      await acked;
      return restartDelay(h, 'worker', failures);
    };

    const first = await crash(1, 1);
    h.clock.advance(first);
    const second = await crash(2, 2);
    expect([first, second]).toEqual([1_000, 2_000]);
    h.clock.advance(second);
    await waitUntil(async () => (await agentOf(h, 'worker')).state === 'running' && (await agentOf(h, 'worker')).incarnation === 3, 'worker running again');
    // Healthy for the healthy period: the two failures before are forgiven.
    h.clock.advance(DEFAULT_RESTART_BUDGET.healthyAfterMs);
    expect(await crash(3, 1)).toBe(1_000);
    expect((await agentOf(h, 'worker')).lastError).toBe('exited with code 3');
  });
});
