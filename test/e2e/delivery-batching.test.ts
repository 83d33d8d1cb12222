/**
 * Batched delivery between a real control plane and hosts over real streams:
 * a raw host that speaks the protocol as it was before batches (no
 * `accepts_deliver_batch` in its Hello, one Ack per envelope) still gets one
 * Deliver per message and has its Acks taken; a raw host that takes batches
 * gets DeliverBatch and may answer with one watermark in an AckBatch; and a
 * real host takes payloads whose sum is past its receive limit without losing
 * its stream (each batch stays under the limit).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HOST_MAX_RECEIVE_MESSAGE_BYTES, MAX_PAYLOAD_BYTES_CEILING } from '../../common/protocol.js';
import type { ControlMessage, StartAgent, Welcome } from '../../gen/tether/v1/host.js';
import { call, Harness } from '../support/harness.js';
import { RawHost } from '../support/raw-host.js';
import { ScriptedModule } from '../support/scripted-module.js';
import { nextEvent, waitUntil } from '../support/wait.js';

/** The seqs an envelope delivers to `agentId`, in order. */
function seqsOf(envelope: ControlMessage, agentId: string): number[] {
  if (envelope.deliver?.agentId === agentId) return [envelope.deliver.seq];
  return envelope.deliverBatch?.deliveries.filter((deliver) => deliver.agentId === agentId).map((deliver) => deliver.seq) ?? [];
}

describe('batched delivery over real streams', () => {
  let harness: Harness | undefined;
  const raws: RawHost[] = [];
  afterEach(async () => {
    for (const raw of raws.splice(0)) await raw.close();
    await harness?.close();
    harness = undefined;
  });

  /** Enrolls a raw host (one that takes batches or not), joins, and has `agentId` dispatched to it. */
  async function joinWithAgent(h: Harness, agentId: string, acceptsDeliverBatch: boolean): Promise<{ raw: RawHost; welcome: Welcome; start: StartAgent }> {
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'raw', joinTtlMs: 0 });
    const raw = RawHost.connect(h.target, `Join ${enrolled.joinToken}`, [], ['idle'], acceptsDeliverBatch);
    raws.push(raw);
    const welcome = (await raw.first((m) => m.welcome !== undefined, 'Welcome')).welcome as Welcome;
    const credential = welcome.hostCredential;
    if (credential === undefined) throw new Error('no host credential in the Welcome of a join');
    raw.send({ ack: { agentId: '', generation: credential.generation, ok: true, error: '', incarnation: 0 } });
    await waitUntil(async () => (await h.store.getHost(enrolled.hostId))?.state === 'active', 'the join token burnt');
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId,
      name: agentId,
      hostId: enrolled.hostId,
      hostLabels: [],
      spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
    });
    const start = (await raw.first((m) => m.startAgent?.agentId === agentId, 'StartAgent')).startAgent as StartAgent;
    raw.send({ agentEvent: { agentId, state: 'started', detail: '', incarnation: start.incarnation } });
    return { raw, welcome, start };
  }

  async function send(h: Harness, agentId: string, count: number): Promise<void> {
    await call(h.admin.sendMessages.bind(h.admin), {
      agentId,
      messages: Array.from({ length: count }, (_, i) => ({ payload: Buffer.from(`m${i + 1}`), contentType: 'text/plain', idempotencyKey: '' })),
    });
  }

  it('sends a host that speaks the protocol from before batches one Deliver per message, and takes its single Acks', async () => {
    harness = await Harness.start({ deliveryWindow: 8 });
    const { raw, start } = await joinWithAgent(harness, 'old', false);
    await send(harness, 'old', 12);
    await waitUntil(() => raw.received.flatMap((m) => seqsOf(m, 'old')).length === 8, 'a window delivered');
    const acked = nextEvent<{ agentId: string; seq: number }>(harness.cp.events, 'message-acked', (e) => e.agentId === 'old' && e.seq === 12);
    // As an old host does: one Ack envelope per message taken.
    for (let seq = 1; seq <= 12; seq++) {
      await waitUntil(() => raw.received.some((m) => seqsOf(m, 'old').includes(seq)), `Deliver ${seq}`);
      raw.send({ ack: { agentId: 'old', seq, ok: true, error: '', incarnation: start.incarnation } });
    }
    await acked;
    expect(raw.received.some((m) => m.deliverBatch !== undefined)).toBe(false);
    expect(raw.received.filter((m) => m.deliver?.agentId === 'old').map((m) => m.deliver?.seq)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(raw.received.filter((m) => m.reject !== undefined)).toEqual([]);
    expect((await harness.store.getAgent('old'))?.ackedSeq).toBe(12);
  });

  it('sends a host that takes batches a window per DeliverBatch, and takes one watermark for it in an AckBatch', async () => {
    harness = await Harness.start({ deliveryWindow: 8 });
    const { raw, welcome, start } = await joinWithAgent(harness, 'new', true);
    expect(welcome.acceptsAckBatch).toBe(true);
    await send(harness, 'new', 12);
    await waitUntil(() => raw.received.flatMap((m) => seqsOf(m, 'new')).length === 8, 'a window delivered');
    const first = raw.received.filter((m) => seqsOf(m, 'new').length > 0);
    expect(first).toHaveLength(1);
    expect(first[0]?.deliverBatch?.deliveries.map((d) => d.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);

    const acked = nextEvent<{ agentId: string; seq: number }>(harness.cp.events, 'message-acked', (e) => e.agentId === 'new' && e.seq === 12);
    raw.send({ ackBatch: { acks: [{ agentId: 'new', seq: 8, ok: true, error: '', incarnation: start.incarnation }] } });
    await waitUntil(() => raw.received.flatMap((m) => seqsOf(m, 'new')).length === 12, 'the rest delivered');
    raw.send({ ackBatch: { acks: [{ agentId: 'new', seq: 12, ok: true, error: '', incarnation: start.incarnation }] } });
    await acked;
    expect(raw.received.flatMap((m) => seqsOf(m, 'new'))).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(raw.received.filter((m) => m.reject !== undefined)).toEqual([]);
  });

  it("delivers largest payloads past a host's receive limit in sum to a real host, its stream never lost", async () => {
    harness = await Harness.start({ deliveryWindow: 4, maxPayloadBytes: MAX_PAYLOAD_BYTES_CEILING, maxOutboxBytes: 8 * MAX_PAYLOAD_BYTES_CEILING });
    const h = harness;
    const scripted = new ScriptedModule();
    const { host, hostId } = await h.startHost('big', { modules: new Map([['scripted', scripted.module]]) });
    let disconnects = 0;
    host.events.on('disconnected', () => void disconnects++);
    await h.dispatch(host, hostId, 'big', 'scripted');
    // Four small ones fill the window while the agent holds the first, so the big ones wait and then go together.
    const gate = scripted.hold('big', 'm1');
    await send(h, 'big', 4);
    await waitUntil(() => scripted.of('big').length === 1, "m1 in the agent's hands");
    // Three of these are past the 4 MiB a host receives in one envelope; each alone fits, and so do two.
    const payloadBytes = Math.floor(HOST_MAX_RECEIVE_MESSAGE_BYTES / 2.5);
    for (let i = 0; i < 4; i++) {
      await call(h.admin.sendMessages.bind(h.admin), {
        agentId: 'big',
        messages: [{ payload: Buffer.alloc(payloadBytes, 65 + i), contentType: 'application/octet-stream', idempotencyKey: '' }],
      });
    }
    gate.open();
    await waitUntil(() => scripted.of('big').length === 8, 'all eight taken');
    expect(scripted.of('big').map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(disconnects).toBe(0);
  });
});
