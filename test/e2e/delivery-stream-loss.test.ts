/**
 * Mail across a lost host stream. A real host behind a loopback TCP proxy (a
 * stable address while the control plane behind it restarts on a new port)
 * shows the agent gets each message exactly once and in order; a raw host,
 * speaking the protocol envelope by envelope, shows exactly what the control
 * plane re-sends when a host resumes.
 */
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import { initialDeliveryState, reduceDelivery, type DeliveryState } from '../../agent-host/delivery/delivery-reducer.js';
import type { MessageInfo } from '../../gen/tether/v1/admin.js';
import type { SentMessage } from '../../gen/tether/v1/common.js';
import type { ControlMessage, StartAgent, Welcome } from '../../gen/tether/v1/host.js';
import type { FakeClock } from '../support/fake-clock.js';
import { call, Harness } from '../support/harness.js';
import { RawHost } from '../support/raw-host.js';
import { ScriptedModule } from '../support/scripted-module.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { nextEvent, waitUntil } from '../support/wait.js';

/** The host's reconnect backoff in these tests (its waits run on the fake clock). */
const RECONNECT_MAX_DELAY_MS = 50;

async function send(harness: Harness, agentId: string, payloads: string[]): Promise<SentMessage[]> {
  const response = await call(harness.admin.sendMessages.bind(harness.admin), {
    agentId,
    messages: payloads.map((payload) => ({ payload: Buffer.from(payload, 'utf8'), contentType: 'text/plain', idempotencyKey: '' })),
  });
  return response.messages;
}

async function pending(harness: Harness, agentId: string): Promise<MessageInfo[]> {
  return (await call(harness.admin.listMessages.bind(harness.admin), { agentId, state: 'pending', pageSize: 0, pageToken: '' })).messages;
}

function numbered(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}${i + 1}`);
}

/**
 * Brings a host that has just lost its stream (the caller saw its one
 * 'disconnected') back to 'connected'. Its reconnect waits run on the fake
 * clock, so each wait is moved past as it begins: one advance per
 * 'disconnected' (a failed attempt starts another wait).
 */
async function driveReconnect(host: AgentHost, clock: FakeClock): Promise<void> {
  let waits = 1;
  let advanced = 0;
  const onDisconnected = (): void => void waits++;
  host.events.on('disconnected', onDisconnected);
  try {
    await waitUntil(() => {
      if (host.state === 'connected') return true;
      for (; advanced < waits; advanced++) clock.advance(RECONNECT_MAX_DELAY_MS);
      return false;
    }, 'the host to reconnect');
  } finally {
    host.events.off('disconnected', onDisconnected);
  }
}

describe('delivery across a lost host stream (real host)', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;
  let scripted: ScriptedModule | undefined;
  afterEach(async () => {
    scripted?.openAll();
    await harness?.close();
    await proxy?.close();
    harness = undefined;
    proxy = undefined;
    scripted = undefined;
  });

  /** A harness, a proxy in front of its control plane, and a host (through the proxy) running `agentId`. */
  async function setUp(
    agentId: string,
    deliveryWindow: number,
  ): Promise<{ harness: Harness; proxy: FaultProxy; scripted: ScriptedModule; host: AgentHost; rejects: unknown[] }> {
    harness = await Harness.start({ deliveryWindow });
    proxy = await FaultProxy.start({ targetPort: harness.cp.port });
    scripted = new ScriptedModule();
    const { host, hostId } = await harness.startHost('proxied', {
      target: `127.0.0.1:${proxy.port}`,
      modules: new Map([['scripted', scripted.module]]),
      reconnectMinDelayMs: 10,
      reconnectMaxDelayMs: RECONNECT_MAX_DELAY_MS,
    });
    await harness.dispatch(host, hostId, agentId, 'scripted');
    const rejects: unknown[] = [];
    const onReject = (e: unknown): void => void rejects.push(e);
    host.events.on('reject', onReject);
    onTestFinished(() => void host.events.off('reject', onReject));
    return { harness, proxy, scripted, host, rejects };
  }

  it('re-sends what was not acknowledged after the control plane restarts on the same data, and the agent sees each message once, in order', async () => {
    const { harness, proxy, scripted, host, rejects } = await setUp('steady', 2);
    const gate = scripted.hold('steady', 'm1');
    const sent = await send(harness, 'steady', numbered('m', 6));
    await waitUntil(() => scripted.of('steady').length >= 1, 'm1 handed to the agent');
    // Nothing is acknowledged: m1 is in the agent's hands, m2 waits on the host, m3..m6 were never sent (window 2).
    expect((await pending(harness, 'steady')).map((m) => m.seq)).toEqual(sent.map((s) => s.seq));

    const disconnected = nextEvent(host.events, 'disconnected');
    await harness.stopControlPlane();
    await disconnected;
    await harness.startControlPlane();
    proxy.setTarget(harness.cp.port);
    // Appended while the host is away.
    await send(harness, 'steady', ['m7', 'm8']);
    await driveReconnect(host, harness.clock);

    // The restarted control plane re-sends from what the host reports taken (nothing yet): m1 and m2 again, which the host drops.
    gate.open();
    await waitUntil(() => scripted.taken('steady').length >= 8, 'all eight taken');
    expect(scripted.taken('steady')).toEqual(numbered('m', 8));
    expect(scripted.of('steady').map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(scripted.of('steady').map((r) => r.id)).toEqual([...sent.map((s) => s.id), expect.any(String), expect.any(String)]);
    await waitUntil(async () => (await pending(harness, 'steady')).length === 0, 'every message acknowledged to the restarted control plane');
    // No envelope of the host's was refused as out of place (an Ack of a seq the new stream never sent, say).
    expect(rejects).toEqual([]);
  });

  it('does not give again what the agent took while its host was cut off (its acks lost)', async () => {
    const { harness, proxy, scripted, host, rejects } = await setUp('offline', 1);
    const gate = scripted.hold('offline', 'm1');
    await send(harness, 'offline', numbered('m', 5));
    await waitUntil(() => scripted.of('offline').length >= 1, 'm1 handed to the agent');

    const disconnected = nextEvent(host.events, 'disconnected');
    proxy.cutAll();
    await disconnected;
    // Taken with no stream to carry the ack: the control plane still has m1 pending.
    gate.open();
    await waitUntil(() => scripted.taken('offline').length >= 1, 'm1 taken while cut off');
    expect(scripted.taken('offline')).toEqual(['m1']);
    expect((await pending(harness, 'offline')).map((m) => m.seq)).toEqual([1, 2, 3, 4, 5]);

    await driveReconnect(host, harness.clock);
    await waitUntil(() => scripted.taken('offline').length >= 5, 'all five taken');
    expect(scripted.of('offline').map((r) => [r.seq, r.payload])).toEqual(numbered('m', 5).map((p, i) => [i + 1, p]));
    await waitUntil(async () => (await pending(harness, 'offline')).length === 0, 'every message acknowledged');
    expect(rejects).toEqual([]);
  });
});

/** What a raw host learnt from joining and being given one agent. */
interface Joined {
  welcome: Welcome;
  start: StartAgent;
  hostToken: string;
}

/** Seqs of the Deliver and Skip envelopes a raw host received for `agentId`, in order. */
function deliveries(received: ControlMessage[], agentId: string): string[] {
  return received.flatMap((m) => {
    if (m.deliver?.agentId === agentId) return [`deliver ${m.deliver.seq}`];
    if (m.skip?.agentId === agentId) return [`skip ${m.skip.seq}`];
    return [];
  });
}

/** Runs what a raw host received through the host's own reducer (the agent taking everything): the seqs given to the agent. */
function givenByReducer(received: ControlMessage[], agentId: string, takenSeq: number): number[] {
  let state: DeliveryState<string> = initialDeliveryState(takenSeq);
  const given: number[] = [];
  const apply = (event: Parameters<typeof reduceDelivery<string>>[1]): void => {
    const next = reduceDelivery(state, event);
    state = next.state;
    for (const effect of next.effects) {
      if (effect.type !== 'give') continue;
      given.push(effect.seq);
      apply({ type: 'taken', seq: effect.seq });
    }
  };
  for (const m of received) {
    if (m.deliver?.agentId === agentId) apply({ type: 'deliver', seq: m.deliver.seq, message: m.deliver.message?.id ?? '' });
    if (m.skip?.agentId === agentId) apply({ type: 'skip', seq: m.skip.seq });
  }
  return given;
}

describe('what the control plane re-sends when a host resumes (raw host)', () => {
  let harness: Harness | undefined;
  const raws: RawHost[] = [];
  afterEach(async () => {
    for (const raw of raws.splice(0)) await raw.close();
    await harness?.close();
    harness = undefined;
  });

  /** Enrolls a host, joins with a raw stream, acknowledges its credential and has `agentId` dispatched to it. */
  async function joinWithAgent(h: Harness, agentId: string): Promise<{ raw: RawHost } & Joined> {
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'raw', joinTtlMs: 0 });
    const raw = RawHost.connect(h.target, `Join ${enrolled.joinToken}`);
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
    return { raw, welcome, start, hostToken: credential.token };
  }

  /** Ends `raw`'s stream and waits until the control plane has let go of it. */
  async function goAway(h: Harness, raw: RawHost): Promise<void> {
    const gone = nextEvent(h.cp.events, 'host-disconnected');
    await raw.close();
    await gone;
  }

  /** Resumes as the same host on a new stream, reporting `agentId` as taken up to `lastSeq`. */
  function resume(h: Harness, joined: Joined, lastSeq: number): RawHost {
    const raw = RawHost.connect(h.target, `Bearer ${joined.hostToken}`, [
      {
        agentId: joined.start.agentId,
        incarnation: joined.start.incarnation,
        epoch: joined.welcome.epoch,
        lastSeq,
        generation: joined.start.credential?.generation ?? 0,
      },
    ]);
    raws.push(raw);
    return raw;
  }

  it('re-sends exactly the messages after the last acknowledged one', async () => {
    harness = await Harness.start();
    const joined = await joinWithAgent(harness, 'resumer');
    const sent = await send(harness, 'resumer', ['m1', 'm2', 'm3']);
    await joined.raw.first((m) => m.deliver?.seq === 3, 'Deliver 3');
    const acked = nextEvent<{ agentId: string; seq: number }>(harness.cp.events, 'message-acked', (e) => e.agentId === 'resumer');
    joined.raw.send({ ack: { agentId: 'resumer', seq: 1, ok: true, error: '', incarnation: joined.start.incarnation } });
    expect((await acked).seq).toBe(1);
    await goAway(harness, joined.raw);

    const again = resume(harness, joined, 1);
    await again.first((m) => m.deliver?.seq === 3, 'Deliver 3 again');
    expect(deliveries(again.received, 'resumer')).toEqual(['deliver 2', 'deliver 3']);
    expect(again.received.filter((m) => m.deliver !== undefined).map((m) => m.deliver?.message?.id)).toEqual([sent[1]?.id, sent[2]?.id]);
    // A cumulative ack of the last one settles the outbox.
    again.send({ ack: { agentId: 'resumer', seq: 3, ok: true, error: '', incarnation: joined.start.incarnation } });
    await waitUntil(async () => harness !== undefined && (await pending(harness, 'resumer')).length === 0, 'the outbox settled');
    expect(again.received.filter((m) => m.reject !== undefined)).toEqual([]);
  });

  it('accepts an Ack, sent right after Hello, for a message the host got on its previous stream', async () => {
    harness = await Harness.start();
    const joined = await joinWithAgent(harness, 'quick-ack');
    await send(harness, 'quick-ack', ['m1', 'm2', 'm3']);
    await joined.raw.first((m) => m.deliver?.seq === 3, 'Deliver 3');
    await goAway(harness, joined.raw);

    // The agent was busy with m1 when its host said Hello (so it reported nothing taken), then took all three at once.
    const acked = nextEvent<{ agentId: string; seq: number }>(harness.cp.events, 'message-acked', (e) => e.agentId === 'quick-ack');
    const again = resume(harness, joined, 0);
    again.send({ ack: { agentId: 'quick-ack', seq: 3, ok: true, error: '', incarnation: joined.start.incarnation } });
    expect((await acked).seq).toBe(3);
    await waitUntil(async () => harness !== undefined && (await pending(harness, 'quick-ack')).length === 0, 'the outbox settled');
    expect(again.received.filter((m) => m.reject !== undefined)).toEqual([]);
  });

  it('ignores an Ack from the placement it superseded, finishing a message after its host resumed', async () => {
    harness = await Harness.start();
    const h = harness;
    const joined = await joinWithAgent(h, 'moved');
    await send(h, 'moved', ['m1', 'm2', 'm3']);
    await joined.raw.first((m) => m.deliver?.seq === 3, 'Deliver 3');
    const acks: number[] = [];
    h.cp.events.on('message-acked', (e: { agentId: string; seq: number }) => {
      if (e.agentId === 'moved') acks.push(e.seq);
    });
    joined.raw.send({ ack: { agentId: 'moved', seq: 1, ok: true, error: '', incarnation: joined.start.incarnation } });
    await waitUntil(() => acks.includes(1), 'm1 acknowledged');
    await goAway(h, joined.raw);

    // The host resumes reporting its agent under another history (as after a restore): the control plane starts it again.
    const again = RawHost.connect(h.target, `Bearer ${joined.hostToken}`, [
      { agentId: 'moved', incarnation: joined.start.incarnation, epoch: 'a-history-this-store-never-had', lastSeq: 1, generation: 1 },
    ]);
    raws.push(again);
    const restart = (await again.first((m) => m.startAgent?.agentId === 'moved', 'StartAgent again')).startAgent as StartAgent;
    expect(restart.incarnation).toBe(joined.start.incarnation + 1);
    expect(restart.ackedSeq).toBe(1);
    await again.first((m) => m.deliver?.seq === 3, 'Deliver 3 to the new placement');
    expect(again.received.some((m) => m.stopAgent?.agentId === 'moved')).toBe(true);

    // The old placement took m2 and m3 meanwhile; its Ack must not stand for the new one, which has taken nothing yet.
    again.send({ ack: { agentId: 'moved', seq: 3, ok: true, error: '', incarnation: joined.start.incarnation } });
    again.send({ ack: { agentId: 'moved', seq: 2, ok: true, error: '', incarnation: restart.incarnation } });
    await waitUntil(() => acks.includes(2), 'm2 acknowledged by the new placement');
    expect(acks).toEqual([1, 2]);
    again.send({ ack: { agentId: 'moved', seq: 3, ok: true, error: '', incarnation: restart.incarnation } });
    await waitUntil(() => acks.includes(3), 'm3 acknowledged by the new placement');
    expect(again.received.filter((m) => m.reject !== undefined)).toEqual([]);
  });

  it('rejects an Ack of a delivery that names no incarnation, and acknowledges nothing', async () => {
    harness = await Harness.start();
    const joined = await joinWithAgent(harness, 'nameless');
    await send(harness, 'nameless', ['m1']);
    await joined.raw.first((m) => m.deliver?.seq === 1, 'Deliver 1');
    joined.raw.send({ ack: { agentId: 'nameless', seq: 1, ok: true, error: '', incarnation: 0 } });
    const reject = (await joined.raw.first((m) => m.reject !== undefined, 'Reject')).reject;
    expect(reject).toMatchObject({ what: 'ack', agentId: 'nameless', reason: 'an Ack of a delivery must name the incarnation' });
    expect((await pending(harness, 'nameless')).map((m) => m.seq)).toEqual([1]);
  });

  it('says Skip again when a dead letter is refused again, so the host never waits on it', async () => {
    harness = await Harness.start({ maxDeliveryAttempts: 1 });
    const joined = await joinWithAgent(harness, 'stubborn');
    await send(harness, 'stubborn', ['poison']);
    await joined.raw.first((m) => m.deliver?.seq === 1, 'Deliver 1');
    const nack = { ack: { agentId: 'stubborn', seq: 1, ok: false, error: 'no thanks', incarnation: joined.start.incarnation } };
    joined.raw.send(nack);
    await joined.raw.first((m) => m.skip?.seq === 1, 'Skip 1');
    // The host had given the message to its agent again before the Skip arrived, and the agent refused it again.
    joined.raw.send(nack);
    await waitUntil(() => deliveries(joined.raw.received, 'stubborn').filter((d) => d === 'skip 1').length === 2, 'a second Skip 1');
    expect(joined.raw.received.filter((m) => m.reject !== undefined)).toEqual([]);
  });

  it.each(['purged', 'requeued'] as const)('tells a resuming host to skip a dead letter it never saw skipped, even once it is %s', async (fate) => {
    harness = await Harness.start({ maxDeliveryAttempts: 1 });
    const joined = await joinWithAgent(harness, 'gappy');
    await send(harness, 'gappy', ['poison', 'm2']);
    await joined.raw.first((m) => m.deliver?.seq === 2, 'Deliver 2');
    joined.raw.send({ ack: { agentId: 'gappy', seq: 1, ok: false, error: 'no thanks', incarnation: joined.start.incarnation } });
    // The Skip reaches the host's stream, but the host goes away before acting on it.
    await joined.raw.first((m) => m.skip?.seq === 1, 'Skip 1');
    await goAway(harness, joined.raw);
    if (fate === 'purged') await call(harness.admin.purgeMessage.bind(harness.admin), { agentId: 'gappy', seq: 1 });
    else expect((await call(harness.admin.requeueMessage.bind(harness.admin), { agentId: 'gappy', seq: 1 })).seq).toBe(3);

    const again = resume(harness, joined, 0);
    const lastSeq = fate === 'purged' ? 2 : 3;
    await again.first((m) => m.deliver?.seq === lastSeq, `Deliver ${lastSeq}`);
    expect(deliveries(again.received, 'gappy')).toEqual(fate === 'purged' ? ['skip 1', 'deliver 2'] : ['skip 1', 'deliver 2', 'deliver 3']);
    // Through the host's own reducer: the agent is given everything that is still to be delivered.
    expect(givenByReducer(again.received, 'gappy', 0)).toEqual(fate === 'purged' ? [2] : [2, 3]);
  });
});
