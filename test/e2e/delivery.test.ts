/**
 * "Mail that is never lost", on a real control plane and a real host over
 * loopback gRPC, with a fake clock shared by both: a fresh token ahead of a
 * message, head-of-line blocking per agent only, NACKs and dead letters
 * (requeue, purge), the bounds on a send, idempotency keys and batch order.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import type { MessageInfo } from '../../gen/tether/v1/admin.js';
import type { SentMessage } from '../../gen/tether/v1/common.js';
import { call, Harness, statusOf } from '../support/harness.js';
import { ScriptedModule } from '../support/scripted-module.js';
import { nextEvent, waitUntil } from '../support/wait.js';

/** One message to send: a text payload, optionally with an idempotency key. */
type Outgoing = string | { payload: string; key?: string; contentType?: string };

/** Sends `messages` to `agentId` as the operator, in one SendMessages call. */
async function send(harness: Harness, agentId: string, messages: Outgoing[]): Promise<SentMessage[]> {
  const response = await call(harness.admin.sendMessages.bind(harness.admin), {
    agentId,
    messages: messages.map((m) => {
      const message = typeof m === 'string' ? { payload: m } : m;
      return { payload: Buffer.from(message.payload, 'utf8'), contentType: message.contentType ?? 'text/plain', idempotencyKey: message.key ?? '' };
    }),
  });
  return response.messages;
}

/** An agent's messages in `state`, as the operator lists them. */
async function listed(harness: Harness, agentId: string, state: 'pending' | 'dead'): Promise<MessageInfo[]> {
  const response = await call(harness.admin.listMessages.bind(harness.admin), { agentId, state, pageSize: 0, pageToken: '' });
  return response.messages;
}

/** Starts a host that runs `scripted` under the module name 'scripted', and the given agents on it. */
async function startScriptedHost(harness: Harness, scripted: ScriptedModule, agentIds: string[]): Promise<AgentHost> {
  const { host, hostId } = await harness.startHost('mail', { modules: new Map([['scripted', scripted.module]]) });
  for (const agentId of agentIds) await harness.dispatch(host, hostId, agentId, 'scripted');
  return host;
}

/** `prefix1 .. prefixN`. */
function numbered(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}${i + 1}`);
}

describe('delivery', () => {
  let harness: Harness | undefined;
  let scripted: ScriptedModule | undefined;
  afterEach(async () => {
    // Handlers held at a gate would keep their agents from stopping.
    scripted?.openAll();
    await harness?.close();
    harness = undefined;
    scripted = undefined;
  });

  it('puts a fresh token in the holder before a message reaches an agent whose token is past half its life', async () => {
    // Rotation falls due at 60 % of the TTL (jitter pinned to its top), so at 55 % only the delivery can rotate.
    harness = await Harness.start({ agentTokenTtlMs: 60_000, random: () => 1 });
    const mail = (scripted = new ScriptedModule());
    const whoAmI: number[] = [];
    mail.onEach = async (context) => {
      whoAmI.push((await context.agent.whoAmI()).generation);
      await context.agent.heartbeat(context.agentId);
    };
    const host = await startScriptedHost(harness, mail, ['fresh']);
    const cp = harness.cp;
    const issued: { generation: number; atMs: number }[] = [];
    const beats: number[] = [];
    const onIssued = (e: { agentId: string; generation: number }): void => {
      if (e.agentId === 'fresh') issued.push({ generation: e.generation, atMs: harness?.clock.now() ?? 0 });
    };
    const onBeat = (e: { agentId: string; generation: number }): void => {
      if (e.agentId === 'fresh') beats.push(e.generation);
    };
    cp.events.on('credential-issued', onIssued);
    cp.events.on('heartbeat', onBeat);
    onTestFinished(() => {
      cp.events.off('credential-issued', onIssued);
      cp.events.off('heartbeat', onBeat);
    });
    const startedAtMs = harness.clock.now();

    // Early in the token's life a message needs no new token (so the check below can fail).
    let periodic = nextEvent(host.events, 'heartbeat');
    harness.clock.advance(6_000);
    await periodic;
    beats.length = 0;
    await send(harness, 'fresh', ['early']);
    await waitUntil(() => mail.taken('fresh').length >= 1, 'the early message taken');
    expect(mail.of('fresh').map((r) => [r.payload, r.generation])).toEqual([['early', 1]]);
    expect(whoAmI).toEqual([1]);
    expect(beats).toEqual([1]);

    // At 55 %: past half its life, before its rotation is due.
    periodic = nextEvent(host.events, 'heartbeat');
    harness.clock.advance(27_000);
    await periodic;
    await waitUntil(() => harness?.cp.isSettled() === true, 'a settled control plane');
    expect(host.agentCredential('fresh')?.generation).toBe(1);
    expect(issued.map((i) => i.generation)).toEqual([]);
    beats.length = 0;

    const [sent] = await send(harness, 'fresh', ['late']);
    await waitUntil(() => mail.taken('fresh').length >= 2, 'the late message taken');
    const late = mail.of('fresh')[1];
    expect(late?.payload).toBe('late');
    expect(late?.seq).toBe(sent?.seq);
    // The holder had the newer generation when the message reached the agent...
    expect(late?.generation).toBe(2);
    // ...issued for the delivery, before the scheduled rotation (60 %) was due...
    expect(issued).toEqual([{ generation: 2, atMs: startedAtMs + 33_000 }]);
    // ...and the tool calls the message triggered reached the control plane with it.
    expect(whoAmI).toEqual([1, 2]);
    expect(beats).toEqual([2]);
  });

  it('holds only the slow agent: another agent on the same host gets all of its messages meanwhile', async () => {
    harness = await Harness.start({ deliveryWindow: 2 });
    const mail = (scripted = new ScriptedModule());
    await startScriptedHost(harness, mail, ['slow', 'quick']);
    const gate = mail.hold('slow', 's1');

    const slowSent = await send(harness, 'slow', numbered('s', 6));
    await waitUntil(() => mail.of('slow').length >= 1, 'slow handed its first message');
    const quickSent = await send(harness, 'quick', numbered('q', 8));
    await waitUntil(() => mail.taken('quick').length >= 8, 'quick to take all of its messages');

    expect(mail.taken('quick')).toEqual(numbered('q', 8));
    expect(mail.of('quick').map((r) => r.seq)).toEqual(quickSent.map((s) => s.seq));
    // Slow still holds its first message and has been handed nothing else; all six wait for it.
    expect(mail.of('slow').map((r) => [r.payload, r.outcome])).toEqual([['s1', undefined]]);
    expect((await listed(harness, 'slow', 'pending')).map((m) => m.seq)).toEqual(slowSent.map((s) => s.seq));
    // Listed a page at a time, too.
    const firstPage = await call(harness.admin.listMessages.bind(harness.admin), { agentId: 'slow', state: 'pending', pageSize: 4, pageToken: '' });
    const secondPage = await call(harness.admin.listMessages.bind(harness.admin), { agentId: 'slow', state: 'pending', pageSize: 4, pageToken: firstPage.nextPageToken });
    expect([firstPage.messages.map((m) => m.seq), secondPage.messages.map((m) => m.seq), secondPage.nextPageToken]).toEqual([[1, 2, 3, 4], [5, 6], '']);

    gate.open();
    await waitUntil(() => mail.taken('slow').length >= 6, 'slow to drain');
    expect(mail.taken('slow')).toEqual(numbered('s', 6));
    expect(mail.of('slow').map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    await waitUntil(async () => harness !== undefined && (await listed(harness, 'slow', 'pending')).length === 0, 'slow acknowledged');
    expect(await listed(harness, 'quick', 'pending')).toEqual([]);
  });

  it('re-sends a refused message with backoff while later ones wait, dead-letters it, then delivers the rest in order; requeue and purge', async () => {
    const maxDelayMs = 4_000;
    harness = await Harness.start({ maxDeliveryAttempts: 3, redeliveryMinDelayMs: 1_000, redeliveryMaxDelayMs: maxDelayMs });
    const mail = (scripted = new ScriptedModule());
    await startScriptedHost(harness, mail, ['picky']);
    const dead: { seq: number; id: string }[] = [];
    const cp = harness.cp;
    const onDead = (e: { agentId: string; seq: number; id: string }): void => void dead.push({ seq: e.seq, id: e.id });
    cp.events.on('dead-letter', onDead);
    onTestFinished(() => void cp.events.off('dead-letter', onDead));
    mail.refuse('picky', 'poison');

    const sent = await send(harness, 'picky', ['a', 'poison', 'b', 'c']);
    expect(sent.map((s) => s.seq)).toEqual([1, 2, 3, 4]);
    const poison = sent[1] as SentMessage;
    const handed = (): string[] => mail.of('picky').map((r) => r.payload) ?? [];
    const attemptsRecorded = async (seq: number, attempts: number): Promise<boolean> =>
      harness !== undefined && (await listed(harness, 'picky', 'pending')).find((m) => m.seq === seq)?.attempts === attempts;

    // Refused twice: each time it comes back (after the clock passes the backoff), and b and c wait behind it.
    for (let attempt = 1; attempt <= 2; attempt++) {
      await waitUntil(() => attemptsRecorded(poison.seq, attempt), `refusal ${attempt} recorded`);
      expect(handed()).toEqual(['a', ...Array<string>(attempt).fill('poison')]);
      expect(mail.taken('picky')).toEqual(['a']);
      harness.clock.advance(maxDelayMs);
      // At least: once the last delivery is refused, b and c follow at once.
      await waitUntil(() => handed().length >= 2 + attempt, `delivery ${attempt + 1} of the refused message`);
    }

    // The third refusal dead-letters it; then the ones after it arrive, in order.
    await waitUntil(() => mail.taken('picky').length >= 3, 'b and c taken after the dead letter');
    expect(handed()).toEqual(['a', 'poison', 'poison', 'poison', 'b', 'c']);
    expect(mail.taken('picky')).toEqual(['a', 'b', 'c']);
    expect(dead).toEqual([{ seq: poison.seq, id: poison.id }]);
    const [letter, ...others] = await listed(harness, 'picky', 'dead');
    expect(others).toEqual([]);
    expect(letter).toMatchObject({ seq: poison.seq, id: poison.id, state: 'dead', attempts: 3, from: 'operator', contentType: 'text/plain', sizeBytes: 6 });
    expect(letter?.lastError).toContain('refusing poison');
    await waitUntil(async () => harness !== undefined && (await listed(harness, 'picky', 'pending')).length === 0, 'everything else acknowledged');

    // Requeued: delivered again under a new seq with the same message id.
    mail.accept('picky', 'poison');
    const requeued = await call(harness.admin.requeueMessage.bind(harness.admin), { agentId: 'picky', seq: poison.seq });
    expect(requeued.seq).toBe(5);
    await waitUntil(() => mail.taken('picky').length >= 4, 'the requeued message taken');
    expect(mail.of('picky').at(-1)).toMatchObject({ payload: 'poison', seq: 5, id: poison.id, outcome: 'taken' });
    expect(await listed(harness, 'picky', 'dead')).toEqual([]);
    expect(await statusOf(call(harness.admin.requeueMessage.bind(harness.admin), { agentId: 'picky', seq: poison.seq }))).toBe(grpc.status.NOT_FOUND);

    // Purged: a second dead letter is removed and cannot be requeued; delivery goes on past it.
    mail.refuse('picky', 'venom');
    const [venom] = await send(harness, 'picky', ['venom']);
    for (let attempt = 1; attempt <= 2; attempt++) {
      await waitUntil(() => attemptsRecorded(venom?.seq ?? 0, attempt), `venom refusal ${attempt} recorded`);
      harness.clock.advance(maxDelayMs);
    }
    await waitUntil(async () => harness !== undefined && (await listed(harness, 'picky', 'dead')).length === 1, 'venom dead-lettered');
    expect((await listed(harness, 'picky', 'dead')).map((m) => [m.seq, m.id])).toEqual([[venom?.seq, venom?.id]]);
    await call(harness.admin.purgeMessage.bind(harness.admin), { agentId: 'picky', seq: venom?.seq ?? 0 });
    expect(await listed(harness, 'picky', 'dead')).toEqual([]);
    expect(await statusOf(call(harness.admin.purgeMessage.bind(harness.admin), { agentId: 'picky', seq: venom?.seq ?? 0 }))).toBe(grpc.status.NOT_FOUND);
    expect(await statusOf(call(harness.admin.requeueMessage.bind(harness.admin), { agentId: 'picky', seq: venom?.seq ?? 0 }))).toBe(grpc.status.NOT_FOUND);
    // Only dead letters can be purged: an acknowledged message cannot.
    expect(await statusOf(call(harness.admin.purgeMessage.bind(harness.admin), { agentId: 'picky', seq: 1 }))).toBe(grpc.status.NOT_FOUND);
    await send(harness, 'picky', ['d']);
    await waitUntil(() => mail.taken('picky').length >= 5, 'd taken after the purge');
    expect(mail.taken('picky')).toEqual(['a', 'b', 'c', 'poison', 'd']);
  });

  it('refuses an oversized message, a send to a full outbox and one to an unknown agent, while other agents keep receiving', async () => {
    harness = await Harness.start({ maxPayloadBytes: 1024, maxOutboxMessages: 4 });
    const mail = (scripted = new ScriptedModule());
    await startScriptedHost(harness, mail, ['stuck', 'free']);
    const gate = mail.hold('stuck', 'f1');
    const toFree: string[] = [];
    const sendFree = async (payload: string): Promise<void> => {
      await send(harness as Harness, 'free', [payload]);
      toFree.push(payload);
      await waitUntil(() => mail.taken('free').length >= toFree.length, `free to take ${payload.slice(0, 16)}`);
    };
    await sendFree('free-1');

    // Over the payload cap: refused whole, for any agent; at the cap: accepted.
    const atCap = `cap:${'x'.repeat(1020)}`;
    expect(Buffer.byteLength(atCap)).toBe(1024);
    expect(await statusOf(send(harness, 'free', [`${atCap}y`]))).toBe(grpc.status.INVALID_ARGUMENT);
    expect(await statusOf(send(harness, 'stuck', ['ok', `${atCap}y`]))).toBe(grpc.status.INVALID_ARGUMENT);
    await sendFree(atCap);

    // A full outbox: the stuck agent holds f1, so nothing of its is acknowledged.
    const stuckSent = await send(harness, 'stuck', ['f1', 'f2', 'f3', { payload: 'f4', key: 'f4-key' }]);
    await waitUntil(() => mail.of('stuck').length >= 1, 'stuck handed f1');
    expect(await statusOf(send(harness, 'stuck', ['f5']))).toBe(grpc.status.RESOURCE_EXHAUSTED);
    await sendFree('free-2');
    // A retried send (same idempotency key) of a message already in the outbox is answered, not refused; a new key is refused.
    expect(await send(harness, 'stuck', [{ payload: 'f4', key: 'f4-key' }])).toEqual([{ id: stuckSent[3]?.id, seq: 4, duplicate: true }]);
    expect(await statusOf(send(harness, 'stuck', [{ payload: 'f5', key: 'f5-key' }]))).toBe(grpc.status.RESOURCE_EXHAUSTED);

    // An unknown agent.
    expect(await statusOf(send(harness, 'nobody', ['hello?']))).toBe(grpc.status.NOT_FOUND);
    await sendFree('free-3');

    // Nothing refused was appended: the stuck agent drains exactly f1..f4, then has room again.
    expect((await listed(harness, 'stuck', 'pending')).map((m) => m.seq)).toEqual(stuckSent.map((s) => s.seq));
    gate.open();
    await waitUntil(() => mail.taken('stuck').length >= 4, 'stuck to drain');
    await waitUntil(async () => harness !== undefined && (await listed(harness, 'stuck', 'pending')).length === 0, 'stuck acknowledged');
    await send(harness, 'stuck', ['f5']);
    await waitUntil(() => mail.taken('stuck').length >= 5, 'f5 taken');
    expect(mail.taken('stuck')).toEqual(numbered('f', 5));
    expect(mail.of('stuck').map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    await sendFree('free-4');
    expect(mail.taken('free')).toEqual(toFree);
    expect(toFree).toHaveLength(5);
  });

  it('answers a send repeated with the same idempotency key with the first one, and the agent gets it once', async () => {
    harness = await Harness.start();
    const mail = (scripted = new ScriptedModule());
    await startScriptedHost(harness, mail, ['idem', 'other']);

    const [first] = await send(harness, 'idem', [{ payload: 'once', key: 'key-1' }]);
    expect(first).toMatchObject({ seq: 1, duplicate: false });
    const [again] = await send(harness, 'idem', [{ payload: 'once, retried', key: 'key-1' }]);
    expect(again).toEqual({ id: first?.id, seq: 1, duplicate: true });
    // Within one batch too, and next to a message with no key.
    const batch = await send(harness, 'idem', [{ payload: 'twice', key: 'key-2' }, { payload: 'twice, retried', key: 'key-2' }, 'plain', { payload: 'once, again', key: 'key-1' }]);
    expect(batch.map((s) => [s.seq, s.duplicate])).toEqual([
      [2, false],
      [2, true],
      [3, false],
      [1, true],
    ]);
    expect(batch[1]?.id).toBe(batch[0]?.id);
    expect(batch[3]?.id).toBe(first?.id);
    // Keys are per agent: the same key is a fresh message for another agent.
    const [elsewhere] = await send(harness, 'other', [{ payload: 'once, elsewhere', key: 'key-1' }]);
    expect(elsewhere).toMatchObject({ seq: 1, duplicate: false });
    expect(elsewhere?.id).not.toBe(first?.id);
    await send(harness, 'idem', ['last']);
    await waitUntil(() => mail.taken('idem').length >= 4, 'the four distinct messages taken');
    expect(mail.of('idem').map((r) => [r.seq, r.payload])).toEqual([
      [1, 'once'],
      [2, 'twice'],
      [3, 'plain'],
      [4, 'last'],
    ]);
    expect(mail.of('idem')[0]?.id).toBe(first?.id);
    await waitUntil(() => mail.taken('other').length >= 1, 'the other agent took its message');
    expect(mail.taken('other')).toEqual(['once, elsewhere']);
  });

  it('keeps the order of a batch, numbering it with consecutive seqs', async () => {
    harness = await Harness.start({ deliveryWindow: 4 });
    const mail = (scripted = new ScriptedModule());
    await startScriptedHost(harness, mail, ['batched']);
    await send(harness, 'batched', ['before']);
    const payloads = numbered('b', 50);
    const sent = await send(harness, 'batched', payloads);
    expect(sent.map((s) => s.seq)).toEqual(Array.from({ length: 50 }, (_, i) => i + 2));
    expect(new Set(sent.map((s) => s.id)).size).toBe(50);
    await waitUntil(() => mail.taken('batched').length >= 51, 'the batch taken');
    expect(mail.taken('batched')).toEqual(['before', ...payloads]);
    expect(mail.of('batched').map((r) => r.id)).toEqual([expect.any(String), ...sent.map((s) => s.id)]);
    expect(mail.of('batched').every((r) => r.from === 'operator' && r.contentType === 'text/plain')).toBe(true);
  });
});
