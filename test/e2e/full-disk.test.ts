/**
 * A full disk answers RESOURCE_EXHAUSTED and the control plane goes on serving.
 * The disk fills for real as far as SQLite can tell: `max_page_count` set to
 * the database's current size makes the next write that needs a new page fail
 * with SQLITE_FULL, which the store turns into ResourceExhaustedError at its
 * edge. Nothing may surface as an unhandled rejection (which would end the
 * process), so the test listens for one.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentModule, DeliveredMessage } from '../../agent-host/tools/agent-module.js';
import { call, Harness } from '../support/harness.js';
import { isPostgresTestRun } from '../support/test-store.js';
import { waitUntil } from '../support/wait.js';

/** Bigger than a page many times over, under the payload cap: needs new pages wherever it goes. */
const BIG_BYTES = 256 * 1024;
const NO_LIMIT_PAGES = 1_073_741_823;

// SQLite's page limit stands for a full disk; a PostgreSQL run (TETHER_TEST_STORE=postgres) skips it.
describe.skipIf(isPostgresTestRun())('a full disk (SQLite)', () => {
  let harness: Harness | undefined;
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
  };

  afterEach(async () => {
    process.off('unhandledRejection', onUnhandled);
    await harness?.close();
    harness = undefined;
  });

  it('answers a send with RESOURCE_EXHAUSTED, keeps serving, and takes sends again once there is room', async () => {
    process.on('unhandledRejection', onUnhandled);
    unhandled.length = 0;
    const received: { seq: number; bytes: number }[] = [];
    const recorder: AgentModule = () => ({
      onMessage: (message: DeliveredMessage) => {
        received.push({ seq: message.seq, bytes: message.payload.length });
        return Promise.resolve();
      },
    });
    harness = await Harness.start();
    const h = harness;
    const { host, hostId } = await h.startHost('host', { modules: new Map([['recorder', recorder]]) });
    await h.dispatch(host, hostId, 'a1', 'recorder');
    const send = (bytes: number): Promise<unknown> =>
      call(h.admin.sendMessages.bind(h.admin), {
        agentId: 'a1',
        messages: [{ contentType: 'application/octet-stream', payload: Buffer.alloc(bytes, 7), idempotencyKey: '' }],
      });
    await send(16);
    await waitUntil(() => received.length === 1, 'the first message taken');

    // The disk is full: the database may not grow past the pages it has.
    const [{ page_count: pages }] = h.sqliteStore.pragma('page_count') as [{ page_count: number }];
    h.sqliteStore.pragma(`max_page_count = ${pages}`);
    const refused = await send(BIG_BYTES).then(
      () => undefined,
      (err: unknown) => err as grpc.ServiceError,
    );
    expect(refused?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(refused?.details).toMatch(/the store is full/);

    // Still serving: admin reads, the host's stream, and nothing half-written (the refused send has no seq).
    const listed = await call(h.admin.listAgents.bind(h.admin), { pageSize: 0, pageToken: '', hostId: '' });
    expect(listed.agents.map((a) => a.agentId)).toEqual(['a1']);
    expect(host.state).toBe('connected');
    expect(h.cp.connectedHosts).toBe(1);

    // Room again: the next send goes through and is delivered, right after the first.
    h.sqliteStore.pragma(`max_page_count = ${NO_LIMIT_PAGES}`);
    await send(BIG_BYTES);
    await waitUntil(() => received.length === 2, 'the message sent after the disk had room');
    expect(received).toEqual([
      { seq: 1, bytes: 16 },
      { seq: 2, bytes: BIG_BYTES },
    ]);
    expect(unhandled).toEqual([]);
  });
});
