/**
 * Host drain (issue 15, Show 7): `hosts drain` moves a host's ensured agents
 * elsewhere one by one, each handed over by its host (the message in hand
 * finished and acknowledged, its acks durable, its old incarnation fenced)
 * before it starts on the target: no message lost or taken twice, never two
 * live copies. With no target an agent is reported blocked and keeps running;
 * `hosts uncordon` undoes the drain; a restarted control plane resumes it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import type { DrainHostResponse } from '../../gen/tether/v1/admin.js';
import { advanceUntil } from '../support/advance-until.js';
import { withinHangBound } from '../support/control-plane-process.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const ROOT = join(import.meta.dirname, '..', '..');

const SPEC = { kind: 'module', module: 'count', command: '', args: [], config: '' };

/** Every handler invocation, by message id, with the host and agent that ran it. */
class Invocations {
  readonly byId = new Map<string, { host: string; agentId: string; seq: number }[]>();

  module(host: string): AgentModule {
    return (context) => ({
      onMessage: async (message) => {
        const seen = this.byId.get(message.id) ?? [];
        seen.push({ host, agentId: context.agentId, seq: message.seq });
        this.byId.set(message.id, seen);
        // A few turns in hand (real work, not time), so a hand-over finds messages under way.
        for (let turn = 0; turn < 3; turn++) await nextTurn();
      },
    });
  }
}

/** Which host runs each agent, checked at every start: a start while another host still runs it is a second live copy. */
class LiveCopies {
  readonly running = new Map<string, Set<string>>();
  readonly overlaps: string[] = [];

  watch(name: string, host: AgentHost): void {
    host.events.on('agent-started', ({ agentId }) => {
      const hosts = this.running.get(agentId) ?? new Set<string>();
      if (hosts.size > 0) this.overlaps.push(`${agentId} started on ${name} while running on ${[...hosts].join(',')}`);
      hosts.add(name);
      this.running.set(agentId, hosts);
    });
    host.events.on('agent-stopped', ({ agentId }) => this.running.get(agentId)?.delete(name));
  }
}

describe('host drain', () => {
  let harness: Harness | undefined;
  const proxies: FaultProxy[] = [];

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    for (const proxy of proxies.splice(0)) await proxy.close();
  });

  async function ensure(h: Harness, agentId: string): Promise<void> {
    await call(h.admin.ensureAgent.bind(h.admin), { agentId, name: '', hostId: '', hostLabels: [], spec: SPEC, update: false });
  }

  async function drainStatus(h: Harness, hostId: string): Promise<DrainHostResponse> {
    return call(h.admin.drainHost.bind(h.admin), { hostId, waitMs: 0, watch: true });
  }

  /**
   * Waits until the control plane has asked `agentId`'s host to hand it over. A
   * drain reports `moving` before the move's store writes and asks the host only
   * after them, so `moving` alone does not mean the host was asked (on
   * PostgreSQL, where each write is a round trip, the gap is wide).
   */
  async function handOverAsked(h: Harness, agentId: string): Promise<void> {
    await waitUntil(() => h.logs.records().some((r) => r.msg === 'agent hand-over asked' && r.agentId === agentId), `the hand-over of ${agentId} asked`);
  }

  async function hostRow(h: Harness, hostId: string): Promise<{ schedulable: boolean; drainState: string }> {
    const { hosts } = await call(h.admin.listHosts.bind(h.admin), { pageSize: 100, pageToken: '' });
    const row = hosts.find((host) => host.hostId === hostId);
    if (row === undefined) throw new Error(`no host ${hostId} listed`);
    return { schedulable: row.schedulable, drainState: row.drainState };
  }

  it('moves 20 ensured agents under a steady message load: none lost, none taken twice, never two live copies', async () => {
    harness = await Harness.start();
    const h = harness;
    const invocations = new Invocations();
    const copies = new LiveCopies();
    const a = await h.startHost('a', { modules: new Map([['count', invocations.module('a')]]) });
    copies.watch('a', a.host);
    const agentIds = Array.from({ length: 20 }, (_, i) => `worker-${String(i).padStart(2, '0')}`);
    for (const agentId of agentIds) await ensure(h, agentId);
    await waitUntil(() => a.host.agentIds().length === 20, 'the 20 agents running on a');
    const b = await h.startHost('b', { modules: new Map([['count', invocations.module('b')]]) });
    copies.watch('b', b.host);
    const verified: { agentId: string; hostId: string; incarnation: number }[] = [];
    h.cp.events.on('agent-verified', (e) => verified.push(e));

    // A steady load from 4 senders, each one message at a time to its 5 agents in turn, all through the drain.
    const sent: string[] = [];
    let isDraining = true;
    const load = Promise.all([0, 1, 2, 3].map(async (sender) => {
      for (let i = 0; i < 2_000 && (isDraining || i < 50); i++) {
        const agentId = agentIds[sender * 5 + (i % 5)] as string;
        const { messages } = await call(h.admin.sendMessages.bind(h.admin), {
          agentId,
          messages: [{ contentType: 'text/plain', payload: Buffer.from(`m${i}`), idempotencyKey: '' }],
        });
        for (const message of messages) sent.push(message.id);
      }
    }));
    await waitUntil(() => invocations.byId.size >= 40, 'the load under way on a');

    const drainStartedAt = performance.now();
    const started = await call(h.admin.drainHost.bind(h.admin), { hostId: a.hostId, waitMs: 0, watch: false });
    expect(started.state).toBe('draining');
    expect((await hostRow(h, a.hostId)).schedulable).toBe(false);
    await waitUntil(async () => (await drainStatus(h, a.hostId)).state === 'drained', 'the drain to finish', 60_000);
    const drainMs = Math.round(performance.now() - drainStartedAt);
    const sentDuringDrain = sent.length;
    isDraining = false;
    await load;

    const status = await drainStatus(h, a.hostId);
    expect(status.agents.map((agent) => [agent.agentId, agent.outcome, agent.targetHostId])).toEqual(agentIds.map((agentId) => [agentId, 'moved', b.hostId]));
    expect(a.host.agentIds()).toEqual([]);
    expect(b.host.agentIds().sort()).toEqual(agentIds);
    for (const agentId of agentIds) {
      const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId });
      expect([agent?.state, agent?.hostId, agent?.incarnation]).toEqual([AgentState.AGENT_STATE_RUNNING, b.hostId, 2]);
    }
    expect(await hostRow(h, a.hostId)).toEqual({ schedulable: false, drainState: 'drained' });

    // Every message sent was taken, each exactly once.
    await waitUntil(() => sent.every((id) => invocations.byId.has(id)), 'every message taken');
    const twice = [...invocations.byId].filter(([, seen]) => seen.length !== 1);
    expect(twice).toEqual([]);
    expect(invocations.byId.size).toBe(sent.length);
    // Messages were taken on both sides of the move.
    const takenOn = [...invocations.byId.values()].map((seen) => seen[0]?.host);
    expect(new Set(takenOn)).toEqual(new Set(['a', 'b']));
    console.log(
      `host-drain: 20 agents moved in ${drainMs} ms (wall) under load; ${sent.length} messages (${sentDuringDrain} sent by the end of the drain), ` +
        `${takenOn.filter((host) => host === 'a').length} taken on a, ${takenOn.filter((host) => host === 'b').length} on b, each once`,
    );
    expect(copies.overlaps).toEqual([]);
    // Old tokens are refused: a heartbeat now verifies only the new incarnation on b.
    verified.length = 0;
    h.clock.advance(3_500);
    await waitUntil(() => new Set(verified.map((v) => v.agentId)).size === 20, 'a heartbeat from every agent');
    expect(verified.filter((v) => v.hostId !== b.hostId || v.incarnation !== 2)).toEqual([]);
  });

  it('waits for the message in hand before the move, and past the handler deadline moves without it (delivered again on the target)', async () => {
    harness = await Harness.start();
    const h = harness;
    const taken: { host: string; text: string }[] = [];
    const gates = new Map<string, () => void>();
    const gated = (host: string): AgentModule => () => ({
      onMessage: async (message) => {
        const text = Buffer.from(message.payload).toString();
        taken.push({ host, text });
        // On a, `hold:` messages wait for the test to let them go (or for ever).
        if (host === 'a' && text.startsWith('hold:')) await new Promise<void>((resolve) => gates.set(text, resolve));
      },
    });
    const a = await h.startHost('a', { handlerDeadlineMs: 60_000, modules: new Map([['count', gated('a')]]) });
    for (const agentId of ['slow', 'stuck']) await ensure(h, agentId);
    await waitUntil(() => a.host.agentIds().length === 2, 'both agents on a');
    const b = await h.startHost('b', { modules: new Map([['count', gated('b')]]) });
    const send = (agentId: string, text: string): Promise<unknown> =>
      call(h.admin.sendMessages.bind(h.admin), { agentId, messages: [{ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: '' }] });
    await send('slow', 'hold:slow');
    await send('slow', 'after:slow');
    await send('stuck', 'hold:stuck');
    await send('stuck', 'after:stuck');
    await waitUntil(() => gates.has('hold:slow') && gates.has('hold:stuck'), 'both messages in hand on a');

    const startedOnB: string[] = [];
    b.host.events.on('agent-started', (e) => startedOnB.push(e.agentId));
    await call(h.admin.drainHost.bind(h.admin), { hostId: a.hostId, waitMs: 0, watch: false });
    // The drain moves one agent at a time, `slow` first: nothing starts on b while its message is in hand.
    await waitUntil(async () => (await drainStatus(h, a.hostId)).agents.some((x) => x.agentId === 'slow' && x.outcome === 'moving'), 'slow being handed over');
    await handOverAsked(h, 'slow');
    await send('slow', 'during:slow');
    expect(startedOnB).toEqual([]);
    gates.get('hold:slow')?.();
    await waitUntil(() => startedOnB.includes('slow'), 'slow started on b once its message is done');
    // `stuck` never lets go: past the handler deadline (from its handler's start) it moves anyway.
    await waitUntil(async () => (await drainStatus(h, a.hostId)).agents.some((x) => x.agentId === 'stuck' && x.outcome === 'moving'), 'stuck being handed over');
    await handOverAsked(h, 'stuck');
    expect(startedOnB).toEqual(['slow']);
    await advanceUntil(h.clock, 5_000, () => startedOnB.includes('stuck'), 'stuck moved past its handler deadline');
    await waitUntil(() => taken.filter((t) => t.host === 'b').length === 4, 'the rest taken on b');
    // slow: its held message taken once (on a), the rest on b in order. stuck: its unfinished message again on b.
    expect(taken.filter((t) => t.text.endsWith(':slow'))).toEqual([
      { host: 'a', text: 'hold:slow' },
      { host: 'b', text: 'after:slow' },
      { host: 'b', text: 'during:slow' },
    ]);
    expect(taken.filter((t) => t.text.endsWith(':stuck'))).toEqual([
      { host: 'a', text: 'hold:stuck' },
      { host: 'b', text: 'hold:stuck' },
      { host: 'b', text: 'after:stuck' },
    ]);
    const { transitions } = await call(h.admin.describeAgent.bind(h.admin), { agentId: 'stuck' });
    expect(transitions.map((t) => t.reason).join('\n')).toMatch(/unfinished at its handler deadline/);
    gates.get('hold:stuck')?.();
  });

  it('a control plane restarted mid-move completes it from the stop its host reports in its next Hello: the message in hand taken once', async () => {
    harness = await Harness.start();
    const h = harness;
    const proxyA = await FaultProxy.start({ targetPort: h.cp.port });
    const proxyB = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxyA, proxyB);
    const taken: { host: string; text: string }[] = [];
    let release: (() => void) | undefined;
    const gated = (host: string): AgentModule => () => ({
      onMessage: async (message) => {
        const text = Buffer.from(message.payload).toString();
        taken.push({ host, text });
        if (host === 'a' && text === 'hold') await new Promise<void>((resolve) => (release = resolve));
      },
    });
    const a = await h.startHost('a', { target: proxyA.target, modules: new Map([['count', gated('a')]]) });
    await ensure(h, 'x');
    await waitUntil(() => a.host.agentIds().includes('x'), 'x on a');
    const b = await h.startHost('b', { target: proxyB.target, modules: new Map([['count', gated('b')]]) });
    for (const text of ['hold', 'next']) {
      await call(h.admin.sendMessages.bind(h.admin), { agentId: 'x', messages: [{ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: '' }] });
    }
    await waitUntil(() => release !== undefined, 'hold in hand on a');
    await call(h.admin.drainHost.bind(h.admin), { hostId: a.hostId, waitMs: 0, watch: false });
    await waitUntil(async () => (await drainStatus(h, a.hostId)).agents.some((x) => x.outcome === 'moving'), 'x being handed over');
    await handOverAsked(h, 'x');

    // The control plane goes down while x finishes its message: its Ack and the stop are sent into a dead stream.
    await h.stopControlPlane();
    const handedOver = new Promise((resolve) => a.host.events.once('agent-handed-over', resolve));
    release?.();
    await handedOver;
    expect(a.host.agentIds()).toEqual([]);

    await h.startControlPlane();
    proxyA.setTarget(h.cp.port);
    proxyB.setTarget(h.cp.port);
    const startedOnB: { agentId: string; incarnation: number }[] = [];
    b.host.events.on('agent-started', (e) => startedOnB.push({ agentId: e.agentId, incarnation: e.incarnation }));
    await advanceUntil(h.clock, 100, () => h.cp.connectedHosts === 2, 'both hosts back');
    await waitUntil(() => taken.some((t) => t.host === 'b'), 'x taking mail on b');
    expect(startedOnB).toEqual([{ agentId: 'x', incarnation: 2 }]);
    expect(taken).toEqual([
      { host: 'a', text: 'hold' },
      { host: 'b', text: 'next' },
    ]);
    await waitUntil(async () => (await drainStatus(h, a.hostId)).state === 'drained', 'the resumed drain to finish');
    // The Hello's report of an agent that has moved on is not held against the host.
    expect(h.logs.text()).not.toMatch(/envelope rejected/);
  });

  it('AgentHost.drain: returns at once when not connected, and when cut short (a second signal) while a hand-over waits', async () => {
    harness = await Harness.start();
    const h = harness;
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    let inHand = false;
    const stuck: AgentModule = (context) => ({
      onMessage: async () => {
        inHand = true;
        await new Promise<void>((resolve) => context.signal.addEventListener('abort', () => resolve(), { once: true }));
      },
    });
    const a = await h.startHost('a', { target: proxy.target, modules: new Map([['count', stuck]]) });
    await ensure(h, 'held');
    await waitUntil(() => a.host.agentIds().includes('held'), 'held on a');
    await h.startHost('b', { modules: new Map([['count', stuck]]) });
    await call(h.admin.sendMessages.bind(h.admin), { agentId: 'held', messages: [{ contentType: 'text/plain', payload: Buffer.from('x'), idempotencyKey: '' }] });
    await waitUntil(() => inHand, 'a message in hand');

    // A second signal while the hand-over waits for the message in hand: the wait ends there.
    const cut = new AbortController();
    const draining = a.host.drain(3_600_000, cut.signal);
    // (NOT_FOUND until the host's DrainRequest has arrived.)
    await waitUntil(async () => (await drainStatus(h, a.hostId).catch(() => undefined))?.agents.some((x) => x.outcome === 'moving') === true, 'held being handed over');
    cut.abort();
    expect(await draining).toEqual({ handedOver: 0, notHandedOver: [{ agentId: 'held', reason: 'the drain was cut short (a second signal)' }] });

    // Not connected: nothing is asked and nothing waited for.
    proxy.blackhole();
    proxy.cutAll();
    await waitUntil(() => a.host.state === 'connecting', 'a to see its stream gone');
    expect(await a.host.drain(3_600_000)).toEqual({
      handedOver: 0,
      notHandedOver: [{ agentId: 'held', reason: 'the control plane is unreachable (not connected), so nothing could be handed over' }],
    });
    // Clean up: a has the message in hand until its stop deadline.
    const closed = a.host.close();
    await advanceUntil(h.clock, 5_000, () => a.host.state === 'closed' && a.host.agentIds().length === 0, 'a closed');
    await closed;
  });

  it('with no target host, reports each agent blocked with its reason while it keeps running; uncordon undoes; a host that connects unblocks', async () => {
    harness = await Harness.start();
    const h = harness;
    const invocations = new Invocations();
    const a = await h.startHost('a', { modules: new Map([['count', invocations.module('a')], ['idle', () => ({})]]) });
    for (const agentId of ['e1', 'e2', 'e3']) await ensure(h, agentId);
    await h.dispatch(a.host, a.hostId, 'dispatched');
    await waitUntil(() => a.host.agentIds().length === 4, 'the agents running on a');

    const updates: { agentId: string; outcome: string }[] = [];
    a.host.events.on('drain-update', (u) => updates.push(u));
    let status = await call(h.admin.drainHost.bind(h.admin), { hostId: a.hostId, waitMs: 0, watch: false });
    await waitUntil(async () => (status = await drainStatus(h, a.hostId)).settled, 'the drain to settle');
    expect(status.state).toBe('draining');
    expect(status.agents.map((agent) => [agent.agentId, agent.outcome, agent.reason])).toEqual([
      ['dispatched', 'stays', expect.stringMatching(/restart policy never/)],
      ['e1', 'blocked', 'no host is connected'],
      ['e2', 'blocked', 'no host is connected'],
      ['e3', 'blocked', 'no host is connected'],
    ]);
    // The host heard it too (what it reports at SIGTERM).
    await waitUntil(() => updates.length === 4, 'the host told of each agent');
    // They keep running where they are, taking their mail.
    expect(a.host.agentIds().sort()).toEqual(['dispatched', 'e1', 'e2', 'e3']);
    await call(h.admin.sendMessages.bind(h.admin), { agentId: 'e1', messages: [{ contentType: 'text/plain', payload: Buffer.from('still here'), idempotencyKey: '' }] });
    await waitUntil(() => [...invocations.byId.values()].some((seen) => seen[0]?.agentId === 'e1'), 'e1 taking a message on a');
    for (const agentId of ['e1', 'e2', 'e3']) {
      const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId });
      expect([agent?.state, agent?.hostId]).toEqual([AgentState.AGENT_STATE_RUNNING, a.hostId]);
    }
    expect(await hostRow(h, a.hostId)).toEqual({ schedulable: false, drainState: 'draining' });

    // Uncordon: schedulable again, the drain stopped; new agents may go there.
    const uncordoned = await call(h.admin.uncordonHost.bind(h.admin), { hostId: a.hostId });
    expect(uncordoned.previousDrainState).toBe('draining');
    expect(await hostRow(h, a.hostId)).toEqual({ schedulable: true, drainState: '' });
    await waitUntil(() => !h.cp.drains.isRunning(a.hostId), 'the drain to stop');
    await ensure(h, 'e4');
    await waitUntil(() => a.host.agentIds().includes('e4'), 'a new agent placed on the uncordoned host');

    // Drained again, the blocked agents move as soon as a host that fits connects.
    await call(h.admin.drainHost.bind(h.admin), { hostId: a.hostId, waitMs: 0, watch: false });
    await waitUntil(async () => (await drainStatus(h, a.hostId)).settled, 'the drain to settle again');
    const b = await h.startHost('b', { modules: new Map([['count', invocations.module('b')]]) });
    await waitUntil(async () => (await drainStatus(h, a.hostId)).state === 'drained', 'the drain to finish once b is there');
    expect(b.host.agentIds().sort()).toEqual(['e1', 'e2', 'e3', 'e4']);
    expect(a.host.agentIds()).toEqual(['dispatched']);
  });

  it('a restarted control plane resumes a drain in progress', async () => {
    harness = await Harness.start();
    const h = harness;
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    const invocations = new Invocations();
    const a = await h.startHost('a', { target: proxy.target, modules: new Map([['count', invocations.module('a')]]) });
    for (const agentId of ['r1', 'r2']) await ensure(h, agentId);
    await waitUntil(() => a.host.agentIds().length === 2, 'the agents running on a');
    await call(h.admin.drainHost.bind(h.admin), { hostId: a.hostId, waitMs: 0, watch: false });
    await waitUntil(async () => (await drainStatus(h, a.hostId)).settled, 'the drain to settle (blocked: no other host)');

    await h.stopControlPlane();
    await h.startControlPlane();
    proxy.setTarget(h.cp.port);
    await waitUntil(() => h.cp.drains.isRunning(a.hostId), 'the drain resumed by the new control plane');
    expect(await hostRow(h, a.hostId)).toEqual({ schedulable: false, drainState: 'draining' });
    // The host reconnects with its backoff, on the fake clock.
    await advanceUntil(h.clock, 100, () => h.cp.connectedHosts === 1, 'a back on the new control plane');
    const b = await h.startHost('b', { modules: new Map([['count', invocations.module('b')]]) });
    await waitUntil(async () => (await drainStatus(h, a.hostId)).state === 'drained', 'the resumed drain to finish');
    expect(b.host.agentIds().sort()).toEqual(['r1', 'r2']);
    expect(a.host.agentIds()).toEqual([]);
  });
});

describe('agent-host SIGTERM', () => {
  const children: ChildProcess[] = [];
  const dirs: string[] = [];
  let harness: Harness | undefined;

  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGKILL');
        await withinHangBound(exited, 'the agent-host child to exit');
      }
    }
    await harness?.close();
    harness = undefined;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  /** Starts the real `agent-host` binary joined to `h`, with `idle` agents; resolves once connected. */
  async function spawnHost(h: Harness, extraArgs: string[] = []): Promise<{ child: ChildProcess; hostId: string; output: { stdout: string; stderr: string }; exited: Promise<number | null> }> {
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'binary', joinTtlMs: 0 });
    const dataDir = mkdtempSync(join(tmpdir(), 'tether-drain-bin-'));
    dirs.push(dataDir);
    const connected = nextEvent<{ hostId: string }>(h.cp.events, 'host-connected', (e) => e.hostId === enrolled.hostId);
    const child = spawn(process.execPath, ['bin/agent-host.js', '--server', h.target, '--data-dir', dataDir, ...extraArgs], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', TETHER_JOIN_TOKEN: enrolled.joinToken, TETHER_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    const output = { stdout: '', stderr: '' };
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (output.stdout += chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (output.stderr += chunk));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    await withinHangBound(connected, 'the binary host to connect');
    return { child, hostId: enrolled.hostId, output, exited };
  }

  /** The binary's JSON log records with message `msg`. */
  function logged(output: { stdout: string }, msg: string): Record<string, unknown>[] {
    return output.stdout
      .split('\n')
      .filter((line) => line.startsWith('{') && line.endsWith('}'))
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((record) => record.msg === msg);
  }

  const IDLE = { kind: 'module', module: 'idle', command: '', args: [], config: '' };
  const agentIds = ['s1', 's2', 's3', 's4', 's5'];

  it('drains a real agent-host with 5 agents before it exits: each handed over and running on the other host', async () => {
    harness = await Harness.start();
    const h = harness;
    const { child, hostId, output, exited } = await spawnHost(h, ['--drain-timeout', '10m']);
    for (const agentId of agentIds) await call(h.admin.ensureAgent.bind(h.admin), { agentId, name: '', hostId: '', hostLabels: [], spec: IDLE, update: false });
    await waitUntil(async () => {
      const { agents } = await call(h.admin.listAgents.bind(h.admin), { pageSize: 100, pageToken: '', hostId });
      return agents.filter((a) => a.state === AgentState.AGENT_STATE_RUNNING).length === 5;
    }, 'the 5 agents running on the binary host');
    const b = await h.startHost('b');
    const startedOnB = new Set<string>();
    b.host.events.on('agent-started', (e) => startedOnB.add(e.agentId));

    child.kill('SIGTERM');
    expect(await withinHangBound(exited, 'the drained host to exit')).toBe(0);
    expect(logged(output, 'agent handed over').map((r) => r.agentId).sort()).toEqual(agentIds);
    expect(logged(output, 'drain over')).toMatchObject([{ handedOver: 5, notHandedOver: 0 }]);
    expect(output.stderr).not.toMatch(/not handed over/);
    await waitUntil(() => startedOnB.size === 5, 'the 5 agents started on b');
    for (const agentId of agentIds) {
      const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId });
      expect([agent?.state, agent?.hostId, agent?.incarnation]).toEqual([AgentState.AGENT_STATE_RUNNING, b.hostId, 2]);
      const { transitions } = await call(h.admin.describeAgent.bind(h.admin), { agentId });
      expect(transitions.at(-2)?.reason).toMatch(/moved off .* by a drain: its host .* handed it over/);
    }
  });

  it('reports at once each agent it cannot hand over (no other host), stops them and exits without waiting out the timeout', async () => {
    harness = await Harness.start();
    const h = harness;
    const { child, hostId, output, exited } = await spawnHost(h, ['--drain-timeout', '1h']);
    for (const agentId of agentIds) await call(h.admin.ensureAgent.bind(h.admin), { agentId, name: '', hostId: '', hostLabels: [], spec: IDLE, update: false });
    await waitUntil(async () => {
      const { agents } = await call(h.admin.listAgents.bind(h.admin), { pageSize: 100, pageToken: '', hostId });
      return agents.filter((a) => a.state === AgentState.AGENT_STATE_RUNNING).length === 5;
    }, 'the 5 agents running on the binary host');

    child.kill('SIGTERM');
    // Bounded by the hang bound, far below the hour of --drain-timeout.
    expect(await withinHangBound(exited, 'the host to exit once every agent is reported blocked')).toBe(0);
    for (const agentId of agentIds) expect(output.stderr).toContain(`agent-host: agent ${agentId} not handed over: blocked: no host is connected`);
    expect(logged(output, 'agent not handed over: it is stopped when the host exits').map((r) => r.agentId).sort()).toEqual(agentIds);
  });
});
