/**
 * Envelope-level violations by a host: each is answered with a Reject for that
 * envelope, and the stream (with the host's other agents) goes on, until the
 * stream's violation budget is spent and it is ended. The violating "host" is a
 * raw stream holding a real host credential (it joined like any host), so it
 * can send what the real host never would; a real host next to it runs an agent
 * the raw one was not given.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Credential } from '../../gen/tether/v1/common.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import type { ControlMessage, Reject } from '../../gen/tether/v1/host.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { helloEnvelope, RawHostStream } from '../support/raw-host-stream.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const BUDGET = 3;

describe('host protocol violations', () => {
  let harness: Harness | undefined;
  const streams: RawHostStream[] = [];

  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    await harness?.close();
    harness = undefined;
  });

  function need<T>(value: T | undefined, what: string): T {
    if (value === undefined) throw new Error(`no ${what}`);
    return value;
  }

  it('rejects each bad envelope while the host\'s other agents keep working, and ends the stream past the budget', async () => {
    harness = await Harness.start({ violationBudget: BUDGET });
    const h = harness;
    const agentApi = h.agentClient();
    const heartbeat = (agentId: string, token: string): Promise<unknown> => statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId }, bearer(token)));
    const agentOf = async (agentId: string): Promise<{ state: AgentState; incarnation: number; hostId: string }> =>
      need((await call(h.admin.getAgent.bind(h.admin), { agentId })).agent, `agent ${agentId}`);

    // A well-behaved host next door, with the agent the raw host will claim.
    const { host: neighbour, hostId: neighbourId } = await h.startHost('neighbour');
    await h.dispatch(neighbour, neighbourId, 'bystander');

    // The raw host joins like any host, acknowledges its credential, and is given one agent.
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'rowdy', joinTtlMs: 0 });
    const raw = RawHostStream.open(h.target, `Join ${enrolled.joinToken}`);
    streams.push(raw);
    raw.send(helloEnvelope());
    const welcome = need((await raw.next((m) => m.welcome !== undefined, 'Welcome')).welcome, 'Welcome');
    const hostCredential: Credential = need(welcome.hostCredential, 'host credential');
    raw.send({ ack: { agentId: '', generation: hostCredential.generation, ok: true, error: '', incarnation: 0 } });
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'own',
      name: 'own',
      hostId: enrolled.hostId,
      hostLabels: [],
      spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
    });
    const start = need((await raw.next((m) => m.startAgent?.agentId === 'own', 'StartAgent for own')).startAgent, 'StartAgent');
    const ownToken = need(start.credential, 'agent credential').token;
    raw.send({ agentEvent: { agentId: 'own', state: 'started', detail: '', incarnation: start.incarnation } });
    await waitUntil(async () => (await agentOf('own')).state === AgentState.AGENT_STATE_RUNNING, 'own running');

    const rejects: { hostId: string; what: string; agentId: string }[] = [];
    h.cp.events.on('reject', (e) => rejects.push(e));
    let lastSeq = 0;
    /** The raw host's own agent still works: a message reaches it and its Ack is taken; its token is accepted. */
    async function ownStillWorks(stream: RawHostStream): Promise<void> {
      const sent = await call(h.admin.sendMessages.bind(h.admin), {
        agentId: 'own',
        messages: [{ contentType: 'text/plain', payload: Buffer.from(`after ${rejects.length} violations`), idempotencyKey: '' }],
      });
      const seq = need(sent.messages[0], 'sent message').seq;
      expect(seq).toBe(lastSeq + 1);
      await stream.next((m) => m.deliver?.agentId === 'own' && m.deliver.seq === seq, `Deliver seq ${seq}`);
      const acked = nextEvent<{ agentId: string; seq: number }>(h.cp.events, 'message-acked', (e) => e.agentId === 'own' && e.seq === seq);
      stream.send({ ack: { agentId: 'own', seq, ok: true, error: '', incarnation: start.incarnation } });
      await acked;
      lastSeq = seq;
      expect(await heartbeat('own', ownToken)).toBe('ok');
    }
    const rejectOf = async (stream: RawHostStream, what: string, agentId: string): Promise<Reject> =>
      need((await stream.next((m: ControlMessage) => m.reject?.what === what && m.reject.agentId === agentId, `Reject of ${what} ${agentId}`)).reject, 'Reject');

    await ownStillWorks(raw);

    // 1. An Ack for a seq never sent.
    raw.send({ ack: { agentId: 'own', seq: lastSeq + 100, ok: true, error: '', incarnation: start.incarnation } });
    expect((await rejectOf(raw, 'ack', 'own')).reason).toMatch(/never sent/);
    await ownStillWorks(raw);

    // 2. A second Hello.
    raw.send(helloEnvelope());
    await rejectOf(raw, 'hello', '');
    await ownStillWorks(raw);

    // 3. An event about an agent it was not given: refused, and the agent it names is untouched.
    raw.send({ agentEvent: { agentId: 'bystander', state: 'exited', detail: 'not yours', incarnation: 0 } });
    await rejectOf(raw, 'agent_event', 'bystander');
    await ownStillWorks(raw);
    expect(await agentOf('bystander')).toMatchObject({ state: AgentState.AGENT_STATE_RUNNING, hostId: neighbourId });
    const neighbourBeat = nextEvent<{ agentId: string; isOk: boolean }>(neighbour.events, 'heartbeat', (e) => e.agentId === 'bystander');
    h.clock.advance(3_000);
    expect((await neighbourBeat).isOk).toBe(true);

    expect(rejects.map((e) => [e.hostId, e.what])).toEqual([
      [enrolled.hostId, 'ack'],
      [enrolled.hostId, 'hello'],
      [enrolled.hostId, 'agent_event'],
    ]);

    // 4. One more (an Ack about the neighbour's agent) is past the budget: the stream is ended.
    const gone = nextEvent<{ hostId: string }>(h.cp.events, 'host-disconnected', (e) => e.hostId === enrolled.hostId);
    raw.send({ ack: { agentId: 'bystander', seq: 1, ok: true, error: '', incarnation: start.incarnation } });
    await rejectOf(raw, 'ack', 'bystander');
    const end = await raw.ended;
    expect(end.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(end.refusal).toBeUndefined();
    await gone;
    expect(rejects).toHaveLength(BUDGET + 1);
    expect(rejects[BUDGET]).toMatchObject({ hostId: enrolled.hostId, what: 'ack', agentId: 'bystander' });

    // Ending the stream is no verdict on the host: it reconnects with its credential and resumes its agent.
    expect(await agentOf('own')).toMatchObject({ state: AgentState.AGENT_STATE_RUNNING, hostId: enrolled.hostId, incarnation: start.incarnation });
    const again = RawHostStream.open(h.target, `Bearer ${hostCredential.token}`);
    streams.push(again);
    again.send(
      helloEnvelope({ running: [{ agentId: 'own', incarnation: start.incarnation, epoch: welcome.epoch, lastSeq, generation: need(start.credential, 'credential').generation }] }),
    );
    await again.next((m) => m.welcome !== undefined, 'Welcome on the new stream');
    await ownStillWorks(again);
    // The budget is per stream: a new violation is rejected and the stream goes on.
    again.send({ ack: { agentId: 'own', seq: lastSeq + 100, ok: true, error: '', incarnation: start.incarnation } });
    await rejectOf(again, 'ack', 'own');
    await ownStillWorks(again);
    expect(again.received.some((m) => m.startAgent !== undefined || m.stopAgent !== undefined)).toBe(false);
    expect(await agentOf('own')).toMatchObject({ incarnation: start.incarnation });
    expect(await agentOf('bystander')).toMatchObject({ state: AgentState.AGENT_STATE_RUNNING, hostId: neighbourId });
  });
});
