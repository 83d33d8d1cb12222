import { status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentContext, DeliveredMessage } from '../../agent-host/tools/agent-module.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

describe('AgentService: agents send, report and complete as themselves', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('sends as the caller (from its token), reports status, completes and is revoked', async () => {
    harness = await Harness.start();
    const contexts = new Map<string, AgentContext>();
    const received: DeliveredMessage[] = [];
    const modules = new Map([
      [
        'record',
        (context: AgentContext) => {
          contexts.set(context.agentId, context);
          return {
            onMessage: (message: DeliveredMessage): Promise<void> => {
              if (context.agentId === 'bob') received.push(message);
              return Promise.resolve();
            },
          };
        },
      ],
    ]);
    const { host, hostId } = await harness.startHost('api', { modules });
    await harness.dispatch(host, hostId, 'alice', 'record');
    await harness.dispatch(host, hostId, 'bob', 'record');
    const alice = contexts.get('alice');
    if (alice === undefined) throw new Error('alice did not start');

    const sent = await alice.agent.sendMessages('bob', [
      { contentType: 'text/plain', payload: Buffer.from('hello'), idempotencyKey: 'k1' },
      { contentType: 'text/plain', payload: Buffer.from('again'), idempotencyKey: 'k2' },
    ]);
    expect(sent.messages.map((m) => m.seq)).toEqual([1, 2]);
    const retried = await alice.agent.sendMessages('bob', [{ contentType: 'text/plain', payload: Buffer.from('hello'), idempotencyKey: 'k1' }]);
    expect(retried.messages[0]).toMatchObject({ seq: 1, duplicate: true });
    await waitUntil(() => received.length === 2, 'bob to receive both messages');
    expect(received.map((m) => [m.seq, m.from, Buffer.from(m.payload).toString()])).toEqual([
      [1, 'alice', 'hello'],
      [2, 'alice', 'again'],
    ]);

    await alice.agent.reportStatus('alice', 'indexing 40%');
    const info = await call(harness.admin.getAgent.bind(harness.admin), { agentId: 'alice' });
    expect(info.agent?.detail).toBe('indexing 40%');
    await expect(alice.agent.reportStatus('bob', 'pwned')).rejects.toMatchObject({ code: 'permission-denied' });

    const token = alice.credentials.get();
    const stopped = nextEvent<{ agentId: string }>(host.events, 'agent-stopped', (e) => e.agentId === 'alice');
    await alice.agent.complete('alice', 'done');
    await stopped;
    const after = await call(harness.admin.getAgent.bind(harness.admin), { agentId: 'alice' });
    expect(after.agent?.state).toBe(AgentState.AGENT_STATE_EXITED);
    expect(after.agent?.detail).toBe('done');
    const client = harness.agentClient();
    expect(await statusOf(call(client.whoAmI.bind(client), {}, bearer(token)))).toBe(status.UNAUTHENTICATED);
  });
});
