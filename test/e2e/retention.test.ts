/**
 * Retention through the running control plane's own sweep, on the fake clock:
 * acknowledged messages older than the retention period are pruned, younger
 * acknowledged ones and pending ones stay. (The store method alone is covered
 * in test/control-plane/store; this is the loop that calls it.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { MessageStateName } from '../../control-plane/store/store.js';
import { advanceUntil } from '../support/advance-until.js';
import { call, Harness } from '../support/harness.js';
import { waitUntil } from '../support/wait.js';

const RETENTION_MS = 600_000;

describe('outbox retention', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('prunes acknowledged messages past the retention period and keeps pending ones', async () => {
    harness = await Harness.start({ ackedRetentionMs: RETENTION_MS });
    const h = harness;
    const seqsIn = async (agentId: string, state: MessageStateName): Promise<number[]> =>
      (await h.store.listMessages(agentId, [state], 0, 100)).map((m) => m.seq);
    const send = async (agentId: string, texts: string[]): Promise<void> => {
      await call(h.admin.sendMessages.bind(h.admin), {
        agentId,
        messages: texts.map((text) => ({ payload: Buffer.from(text), contentType: 'text/plain', idempotencyKey: '' })),
      });
    };

    const { host, hostId } = await h.startHost('mail');
    await h.dispatch(host, hostId, 'taker');
    // No host has this label: the agent stays pending, and so does its mail.
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'unplaced',
      name: 'unplaced',
      hostId: '',
      hostLabels: [{ key: 'pool', value: 'nowhere' }],
      spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
    });

    // The sweep runs once every retention period from start (t0), pruning what was acknowledged before one period back.
    const t0 = h.clock.now();
    h.clock.advance(50_000);
    await send('taker', ['old-1', 'old-2', 'old-3']);
    await send('unplaced', ['waiting-1', 'waiting-2']);
    await waitUntil(async () => (await seqsIn('taker', 'acked')).length === 3, 'the first messages to be acknowledged');
    // Past the first sweep (t0 + period): nothing was acknowledged before t0, so nothing goes.
    await advanceUntil(h.clock, 10_000, () => h.clock.now() >= t0 + RETENTION_MS + 100_000, 'the clock to pass the first sweep');
    expect(await seqsIn('taker', 'acked')).toEqual([1, 2, 3]);
    await send('taker', ['young']);
    await waitUntil(async () => (await seqsIn('taker', 'acked')).length === 4, 'the young message to be acknowledged');

    // The second sweep (t0 + 2 periods) prunes what was acknowledged before t0 + one period: the first three only.
    await advanceUntil(h.clock, 10_000, async () => (await seqsIn('taker', 'acked')).length < 4, 'the sweep to prune the old acknowledged messages');
    expect(await seqsIn('taker', 'acked')).toEqual([4]);
    expect(await seqsIn('unplaced', 'pending')).toEqual([1, 2]);
    const listed = await call(h.admin.listMessages.bind(h.admin), { agentId: 'unplaced', state: 'pending', pageSize: 0, pageToken: '' });
    expect(listed.messages.map((m) => m.seq)).toEqual([1, 2]);
  });
});
