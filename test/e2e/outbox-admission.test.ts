/**
 * What an outbox takes, over real gRPC: idempotency keys are the sender's own
 * (an agent's key never makes the operator's send a duplicate, nor the other
 * way round, and never tells one sender the other's message id and seq); an
 * agent in a final state takes no new mail (FAILED_PRECONDITION); and an outbox
 * is capped by payload bytes as well as by count (RESOURCE_EXHAUSTED).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentContext, AgentModule, DeliveredMessage } from '../../agent-host/tools/agent-module.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { ControlPlaneProcess } from '../support/control-plane-process.js';
import { call, Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

describe('outbox admission', () => {
  let harness: Harness | undefined;
  const cleanups: (() => Promise<unknown> | void)[] = [];
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  /** A module that keeps each agent's context and what bob receives. */
  function recorder(): { modules: Map<string, AgentModule>; contexts: Map<string, AgentContext>; received: DeliveredMessage[] } {
    const contexts = new Map<string, AgentContext>();
    const received: DeliveredMessage[] = [];
    const record: AgentModule = (context) => {
      contexts.set(context.agentId, context);
      return {
        onMessage: (message) => {
          if (context.agentId === 'bob') received.push(message);
          return Promise.resolve();
        },
      };
    };
    return { modules: new Map([['record', record]]), contexts, received };
  }

  function text(value: string, idempotencyKey = ''): { contentType: string; payload: Buffer; idempotencyKey: string } {
    return { contentType: 'text/plain', payload: Buffer.from(value), idempotencyKey };
  }

  it("keeps each sender's idempotency keys its own: agent then operator, operator then agent, and each one's retry", async () => {
    harness = await Harness.start();
    const h = harness;
    const { modules, contexts, received } = recorder();
    const { host, hostId } = await h.startHost('keys', { modules });
    await h.dispatch(host, hostId, 'alice', 'record');
    await h.dispatch(host, hostId, 'bob', 'record');
    const alice = contexts.get('alice');
    if (alice === undefined) throw new Error('alice did not start');
    const operatorSend = (value: string, key: string): Promise<{ id: string; seq: number; duplicate: boolean } | undefined> =>
      call(h.admin.sendMessages.bind(h.admin), { agentId: 'bob', messages: [text(value, key)] }).then((r) => r.messages[0]);
    const aliceSend = async (value: string, key: string): Promise<{ id: string; seq: number; duplicate: boolean } | undefined> =>
      (await alice.agent.sendMessages('bob', [text(value, key)])).messages[0];

    const fromAlice = await aliceSend('alice K', 'K');
    expect(fromAlice).toMatchObject({ seq: 1, duplicate: false });
    const fromOperator = await operatorSend('operator K', 'K');
    expect(fromOperator).toMatchObject({ seq: 2, duplicate: false });
    expect(fromOperator?.id).not.toBe(fromAlice?.id);
    const operatorFirst = await operatorSend('operator L', 'L');
    expect(operatorFirst).toMatchObject({ seq: 3, duplicate: false });
    const aliceSecond = await aliceSend('alice L', 'L');
    expect(aliceSecond).toMatchObject({ seq: 4, duplicate: false });
    expect(aliceSecond?.id).not.toBe(operatorFirst?.id);
    // The same sender twice still gets its own earlier answer.
    expect(await aliceSend('alice K again', 'K')).toEqual({ ...fromAlice, duplicate: true });
    expect(await operatorSend('operator K again', 'K')).toEqual({ ...fromOperator, duplicate: true });
    expect(await aliceSend('alice L again', 'L')).toEqual({ ...aliceSecond, duplicate: true });
    expect(await operatorSend('operator L again', 'L')).toEqual({ ...operatorFirst, duplicate: true });

    await waitUntil(() => received.length === 4, 'bob to receive four messages');
    expect(received.map((m) => [m.seq, m.from, Buffer.from(m.payload).toString()])).toEqual([
      [1, 'alice', 'alice K'],
      [2, 'operator', 'operator K'],
      [3, 'operator', 'operator L'],
      [4, 'alice', 'alice L'],
    ]);
  });

  it('refuses new mail for a stopped or exited agent with FAILED_PRECONDITION, from the operator and from agents', async () => {
    harness = await Harness.start();
    const h = harness;
    const { modules, contexts } = recorder();
    const { host, hostId } = await h.startHost('ended', { modules });
    await h.dispatch(host, hostId, 'alice', 'record');
    await h.dispatch(host, hostId, 'bob', 'record');
    await h.dispatch(host, hostId, 'carol', 'record');
    const alice = contexts.get('alice');
    const carol = contexts.get('carol');
    if (alice === undefined || carol === undefined) throw new Error('alice or carol did not start');

    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'bob', reason: '' });
    await expect(call(h.admin.sendMessages.bind(h.admin), { agentId: 'bob', messages: [text('late')] })).rejects.toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
      details: 'agent bob is stopped: its outbox takes no new messages (ensure the agent again to send to it)',
    });
    await expect(alice.agent.sendMessages('bob', [text('late')])).rejects.toMatchObject({ code: 'failed-precondition' });

    const exited = nextEvent<{ agentId: string }>(host.events, 'agent-stopped', (e) => e.agentId === 'carol');
    await carol.agent.complete('carol', 'done');
    await exited;
    await expect(call(h.admin.sendMessages.bind(h.admin), { agentId: 'carol', messages: [text('late')] })).rejects.toMatchObject({
      code: grpc.status.FAILED_PRECONDITION,
      details: 'agent carol is exited: its outbox takes no new messages (ensure the agent again to send to it)',
    });
    const bob = await call(h.admin.listMessages.bind(h.admin), { agentId: 'bob', state: 'pending', pageSize: 10, pageToken: '' });
    expect(bob.messages).toEqual([]);
  });

  it('caps an outbox by payload bytes, as `serve` is told by TETHER_MAX_OUTBOX_BYTES: past the cap RESOURCE_EXHAUSTED, what fits taken up to it exactly', async () => {
    const KIB = 1024;
    const dataDir = mkdtempSync(join(tmpdir(), 'tether-outbox-bytes-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const adminToken = `admin-${randomBytes(24).toString('base64url')}`;
    const cp = await ControlPlaneProcess.start({
      dataDir,
      adminToken,
      env: { TETHER_MAX_OUTBOX_BYTES: String(64 * KIB), TETHER_MAX_PAYLOAD_BYTES: String(64 * KIB) },
    });
    cleanups.push(() => cp.close());
    const admin = new AdminServiceClient(`127.0.0.1:${cp.port}`, grpc.credentials.createInsecure(), {
      interceptors: [bearerInterceptor({ get: () => adminToken })],
    });
    cleanups.push(() => admin.close());
    // Placed on no host (none has the label): it stays pending, so nothing is delivered and acked meanwhile.
    await call(admin.dispatchAgent.bind(admin), {
      agentId: 'waiting',
      name: 'waiting',
      hostId: '',
      hostLabels: [{ key: 'zone', value: 'nowhere' }],
      spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
    });
    const send = (bytes: number): Promise<unknown> =>
      call(admin.sendMessages.bind(admin), {
        agentId: 'waiting',
        messages: [{ contentType: 'application/octet-stream', payload: Buffer.alloc(bytes, 1), idempotencyKey: '' }],
      });
    await send(40 * KIB);
    await expect(send(30 * KIB)).rejects.toMatchObject({
      code: grpc.status.RESOURCE_EXHAUSTED,
      details:
        `the outbox of waiting is full (${40 * KIB} bytes of unacknowledged or dead-lettered payloads; these ${30 * KIB} more would pass the limit of ${64 * KIB}; ` +
        'dead letters go with `control-plane messages purge|requeue`)',
    });
    await send(24 * KIB);
    await expect(send(1)).rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED });
  });
});
