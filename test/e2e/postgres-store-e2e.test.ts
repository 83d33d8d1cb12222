/**
 * The key end-to-end scenarios on a PostgreSQL store, in every run of the
 * suite (the whole list runs on PostgreSQL with TETHER_TEST_STORE=postgres; see
 * the README): delivery and acks across a control-plane restart, rotation
 * through several token lifetimes, a lost host's ensured agent started
 * elsewhere with its mail, and a drain. Each control plane here is in process,
 * on a fresh schema of its own (dropped at teardown).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { PostgresStore } from '../../control-plane/store/postgres-store.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness } from '../support/harness.js';
import { isPostgresAvailable } from '../support/postgres.js';
import { waitUntil } from '../support/wait.js';

const isAvailable = await isPostgresAvailable('the end-to-end scenarios on PostgreSQL');

const SPEC = { kind: 'module', module: 'mail', command: '', args: [], config: '' };

/** A module that records what each agent took, per host; `hold` messages wait for the test to let them go. */
class Mailbox {
  readonly taken: { host: string; agentId: string; seq: number; text: string }[] = [];
  readonly #gates = new Map<string, () => void>();

  module(host: string): AgentModule {
    return (context) => ({
      onMessage: async (message) => {
        const text = Buffer.from(message.payload).toString();
        this.taken.push({ host, agentId: context.agentId, seq: message.seq, text });
        if (text.startsWith('hold')) await new Promise<void>((resolve) => this.#gates.set(`${context.agentId}/${text}`, resolve));
      },
    });
  }

  isHeld(agentId: string, text: string): boolean {
    return this.#gates.has(`${agentId}/${text}`);
  }

  release(agentId: string, text: string): void {
    this.#gates.get(`${agentId}/${text}`)?.();
  }

  of(agentId: string): string[] {
    return this.taken.filter((t) => t.agentId === agentId).map((t) => `${t.host}:${t.seq}:${t.text}`);
  }
}

function send(h: Harness, agentId: string, texts: readonly string[]): Promise<{ messages: { seq: number; duplicate: boolean }[] }> {
  return call(h.admin.sendMessages.bind(h.admin), {
    agentId,
    messages: texts.map((text) => ({ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: `${agentId}/${text}` })),
  });
}

function ensure(h: Harness, agentId: string): Promise<unknown> {
  return call(h.admin.ensureAgent.bind(h.admin), { agentId, name: '', hostId: '', hostLabels: [], spec: SPEC, update: false });
}

describe.runIf(isAvailable)('end to end on a PostgreSQL store', () => {
  let harness: Harness | undefined;
  const proxies: FaultProxy[] = [];
  afterEach(async () => {
    for (const p of proxies.splice(0)) await p.close();
    await harness?.close();
    harness = undefined;
  });

  it('dispatches, delivers and acknowledges across a control-plane restart: each message once, in order, the agent never restarted', async () => {
    harness = await Harness.start({ storeEngine: 'postgres' });
    const h = harness;
    expect(h.store).toBeInstanceOf(PostgresStore);
    const mail = new Mailbox();
    // The host reaches the control plane through a proxy, pointed at the next one after the restart (on a new port).
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    const { host, hostId } = await h.startHost('pg-host', { target: proxy.target, modules: new Map([['mail', mail.module('pg-host')]]) });
    const started: number[] = [];
    host.events.on('agent-started', (e) => started.push(e.incarnation));
    await h.dispatch(host, hostId, 'pg-mail', 'mail');
    await send(h, 'pg-mail', ['m1', 'hold-m2', 'm3', 'm4']);
    await waitUntil(() => mail.isHeld('pg-mail', 'hold-m2'), 'm2 in hand');
    await waitUntil(async () => (await h.store.getAgent('pg-mail'))?.ackedSeq === 1, 'm1 acknowledged in the store');

    // Down while m2 is in hand and m3, m4 wait: the next control plane reads what the first committed.
    await h.stopControlPlane();
    await advanceUntil(h.clock, 10, () => host.state === 'connecting', 'the host to see its control plane gone');
    await h.startControlPlane();
    proxy.setTarget(h.cp.port);
    await advanceUntil(h.clock, 10, () => host.state === 'connected', 'the host back on the new control plane');
    mail.release('pg-mail', 'hold-m2');
    // A send repeated with its keys is answered with the first seqs, marked duplicate.
    const again = await send(h, 'pg-mail', ['m1', 'hold-m2', 'm3', 'm4']);
    expect(again.messages.map((m) => [m.seq, m.duplicate])).toEqual([[1, true], [2, true], [3, true], [4, true]]);
    const next = await send(h, 'pg-mail', ['m5', 'm6']);
    expect(next.messages.map((m) => m.seq)).toEqual([5, 6]);
    await waitUntil(async () => (await h.store.getAgent('pg-mail'))?.ackedSeq === 6, 'everything acknowledged');
    expect(mail.of('pg-mail')).toEqual(['pg-host:1:m1', 'pg-host:2:hold-m2', 'pg-host:3:m3', 'pg-host:4:m4', 'pg-host:5:m5', 'pg-host:6:m6']);
    expect(started).toEqual([1]);
    const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId: 'pg-mail' });
    expect(agent).toMatchObject({ state: AgentState.AGENT_STATE_RUNNING, incarnation: 1 });
  });

  it('rotates every agent through three token lifetimes: every heartbeat authenticated, the store at the generation the host holds', async () => {
    const TTL_MS = 60_000;
    const STEP_MS = TTL_MS / 20;
    harness = await Harness.start({ storeEngine: 'postgres', agentTokenTtlMs: TTL_MS, clockToleranceMs: 0, heartbeatIntervalMs: STEP_MS });
    const h = harness;
    const agentIds = ['pg-rot-a', 'pg-rot-b', 'pg-rot-c'];
    const { host, hostId } = await h.startHost('pg-rotation');
    const beats = new Map<string, boolean[]>(agentIds.map((id) => [id, []]));
    const issued = new Map<string, number[]>(agentIds.map((id) => [id, []]));
    host.events.on('heartbeat', (e) => beats.get(e.agentId)?.push(e.isOk));
    h.cp.events.on('credential-issued', (e) => issued.get(e.agentId)?.push(e.generation));
    for (const agentId of agentIds) await h.dispatch(host, hostId, agentId);
    const steps = (3 * TTL_MS) / STEP_MS;
    for (let step = 1; step <= steps; step++) {
      h.clock.advance(STEP_MS);
      await waitUntil(
        () =>
          agentIds.every((id) => (beats.get(id)?.length ?? 0) >= step) &&
          h.cp.isSettled() &&
          agentIds.every((id) => host.agentCredential(id)?.generation === issued.get(id)?.at(-1)),
        `step ${step}: heartbeats, a settled control plane and holders at the issued generation`,
      );
    }
    for (const agentId of agentIds) {
      expect(beats.get(agentId)?.filter((isOk) => !isOk), `${agentId}: failed heartbeats`).toEqual([]);
      const generations = issued.get(agentId) ?? [];
      expect(generations.length, `${agentId}: credentials issued`).toBeGreaterThanOrEqual(4);
      expect(generations).toEqual(generations.map((_, i) => i + 1));
      expect((await h.store.getAgent(agentId))?.generation).toBe(generations.at(-1));
    }
  });

  it('a lost host: its ensured agent starts on another host under a new incarnation and gets its waiting mail in order', async () => {
    const AGENT_TTL_MS = 60_000;
    const TOLERANCE_MS = 1_000;
    harness = await Harness.start({ storeEngine: 'postgres', agentTokenTtlMs: AGENT_TTL_MS, clockToleranceMs: TOLERANCE_MS, pingIntervalMs: 2_000 });
    const h = harness;
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    const mail = new Mailbox();
    const a = await h.startHost('a', { target: proxy.target, isSelfFenceEnabled: true, modules: new Map([['mail', mail.module('a')]]) });
    await ensure(h, 'pg-mover');
    await waitUntil(() => a.host.agentIds().includes('pg-mover'), 'the agent running on a');
    await send(h, 'pg-mover', ['m1']);
    await waitUntil(() => mail.taken.length === 1, 'm1 taken on a');
    const b = await h.startHost('b', { isSelfFenceEnabled: true, modules: new Map([['mail', mail.module('b')]]) });
    const events: string[] = [];
    a.host.events.on('self-fenced', () => events.push('a self-fenced'));
    b.host.events.on('agent-started', (e) => events.push(`b started ${e.agentId}`));

    proxy.blackhole();
    proxy.cutAll();
    await waitUntil(() => h.cp.connectedHosts === 1, 'the control plane to see a gone');
    await send(h, 'pg-mover', ['m2', 'm3', 'm4']);
    await advanceUntil(h.clock, 500, async () => {
      const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId: 'pg-mover' });
      return agent?.state === AgentState.AGENT_STATE_RUNNING && agent.hostId === b.hostId;
    }, 'the agent running on b');
    expect(events).toEqual(['a self-fenced', 'b started pg-mover']);
    await waitUntil(() => mail.taken.length === 4, 'm2..m4 taken on b');
    expect(mail.of('pg-mover')).toEqual(['a:1:m1', 'b:2:m2', 'b:3:m3', 'b:4:m4']);
    const record = await h.store.getAgent('pg-mover');
    expect(record?.incarnation).toBeGreaterThan(1);
    const reasons = (await h.store.listAgentTransitions('pg-mover', 50)).map((t) => t.reason).join('\n');
    expect(reasons).toMatch(/its host .* was lost/);
  });

  it('drains a host: every ensured agent handed over to the other one, each message taken once, in order, under load', async () => {
    harness = await Harness.start({ storeEngine: 'postgres' });
    const h = harness;
    const mail = new Mailbox();
    const a = await h.startHost('a', { modules: new Map([['mail', mail.module('a')]]) });
    const agentIds = Array.from({ length: 6 }, (_, i) => `pg-drain-${i}`);
    for (const agentId of agentIds) await ensure(h, agentId);
    await waitUntil(() => a.host.agentIds().length === agentIds.length, 'the agents running on a');
    const b = await h.startHost('b', { modules: new Map([['mail', mail.module('b')]]) });
    for (const agentId of agentIds) await send(h, agentId, ['m1', 'm2']);
    await waitUntil(() => mail.taken.length === 2 * agentIds.length, 'the first messages taken on a');

    await call(h.admin.drainHost.bind(h.admin), { hostId: a.hostId, waitMs: 0, watch: false });
    // Sends go on while the drain runs.
    for (const agentId of agentIds) await send(h, agentId, ['m3', 'm4']);
    await waitUntil(async () => (await call(h.admin.drainHost.bind(h.admin), { hostId: a.hostId, waitMs: 0, watch: true })).state === 'drained', 'the drain to finish');
    for (const agentId of agentIds) await send(h, agentId, ['m5']);
    await waitUntil(() => mail.taken.length === 5 * agentIds.length, 'every message taken');

    expect(a.host.agentIds()).toEqual([]);
    expect(b.host.agentIds().sort()).toEqual(agentIds);
    for (const agentId of agentIds) {
      // Once each, in seq order, whichever host took it.
      expect(mail.of(agentId).map((t) => t.slice(t.indexOf(':') + 1))).toEqual(['1:m1', '2:m2', '3:m3', '4:m4', '5:m5']);
      expect(mail.of(agentId).at(-1)).toBe('b:5:m5');
      // The last ack is committed a moment after the handler took the message.
      await waitUntil(async () => (await h.store.getAgent(agentId))?.ackedSeq === 5, `${agentId}'s m5 acknowledged`);
      expect(await h.store.getAgent(agentId)).toMatchObject({ hostId: b.hostId, state: 'running', ackedSeq: 5 });
    }
  });
});
