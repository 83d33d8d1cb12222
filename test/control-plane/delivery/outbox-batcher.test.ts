import { describe, expect, it } from 'vitest';
import { OutboxBatcher } from '../../../control-plane/delivery/outbox-batcher.js';
import type { AppendRequest, AppendResult, OutboxBatch, Store } from '../../../control-plane/store/store.js';
import { withinHangBound } from '../../support/control-plane-process.js';
import { FakeClock } from '../../support/fake-clock.js';

/** A fake of the one Store method the batcher uses: records each commit, appends numbered from 1 per agent. */
class FakeOutboxStore {
  readonly commits: OutboxBatch[] = [];
  isFailing = false;
  readonly #lastSeq = new Map<string, number>();

  applyOutboxBatch(batch: OutboxBatch): Promise<(AppendResult[] | Error)[]> {
    if (this.isFailing) return Promise.reject(new Error('disk full'));
    this.commits.push(batch);
    return Promise.resolve(
      batch.appends.map((request) =>
        request.messages.map((message) => {
          const seq = (this.#lastSeq.get(request.agentId) ?? 0) + 1;
          this.#lastSeq.set(request.agentId, seq);
          return { id: message.id, seq, isDuplicate: false };
        }),
      ),
    );
  }

  asStore(): Store {
    return this as unknown as Store;
  }
}

function appendRequest(agentId: string): AppendRequest {
  return {
    agentId,
    sender: { kind: 'operator' },
    maxPending: 100,
    maxPendingBytes: 1024,
    messages: [{ id: `${agentId}-m`, contentType: 'text/plain', payload: Buffer.from('x'), createdAtMs: 0, idempotencyKey: null }],
  };
}

/** Resolves after `turns` turns of the event loop (stepping it, not waiting on time). */
async function turns(count: number): Promise<void> {
  for (let i = 0; i < count; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

describe('OutboxBatcher', () => {
  it('commits a lone ack, and reports it committed', async () => {
    const store = new FakeOutboxStore();
    const batcher = new OutboxBatcher(store.asStore());
    expect(await withinHangBound(batcher.ack('a', 3), 'the ack commit')).toBe(true);
    expect(store.commits).toEqual([{ appends: [], acks: [{ agentId: 'a', seq: 3 }] }]);
  });

  it('groups acks that keep arriving turn after turn into few commits, each carrying only the highest seq per agent', async () => {
    const store = new FakeOutboxStore();
    const batcher = new OutboxBatcher(store.asStore());
    const committed: Promise<boolean>[] = [];
    for (let seq = 1; seq <= 1_000; seq++) {
      committed.push(batcher.ack('a', seq), batcher.ack('b', seq));
      await turns(1);
    }
    expect(await withinHangBound(Promise.all(committed), 'every ack committed')).toEqual(committed.map(() => true));
    // 2,000 acks; at most 256 held per commit, so a handful of commits rather than one per turn.
    expect(store.commits.length).toBeGreaterThanOrEqual(Math.ceil(2_000 / 256));
    expect(store.commits.length).toBeLessThan(20);
    for (const commit of store.commits) expect(new Set(commit.acks.map((ack) => ack.agentId)).size).toBe(commit.acks.length);
    expect(store.commits.at(-1)?.acks).toEqual(
      expect.arrayContaining([
        { agentId: 'a', seq: 1_000 },
        { agentId: 'b', seq: 1_000 },
      ]),
    );
  });

  it('holds watermark acks that come with idle turns between them (as a host sends them) for a count, not for the first idle turn', async () => {
    const store = new FakeOutboxStore();
    const batcher = new OutboxBatcher(store.asStore());
    const committed: Promise<boolean>[] = [];
    // One watermark for 32 messages every third turn: 16,000 messages in 500 acks over 1,500 turns.
    for (let i = 1; i <= 500; i++) {
      committed.push(batcher.ack('a', i * 32, 32));
      await turns(3);
    }
    expect(await withinHangBound(Promise.all(committed), 'every ack committed')).toEqual(committed.map(() => true));
    // Committed at each idle turn, that would be 500 commits; by count or turns waited, a handful.
    expect(store.commits.length).toBeLessThan(50);
    expect(store.commits.at(-1)?.acks).toEqual([{ agentId: 'a', seq: 16_000 }]);
  });

  it('commits acks that keep arriving once the first has waited its time on the clock', async () => {
    const store = new FakeOutboxStore();
    const clock = new FakeClock();
    const batcher = new OutboxBatcher(store.asStore(), { clock });
    const committed: Promise<boolean>[] = [];
    // An ack every turn, 30 ms apart: far from the counts, and 10 turns are far from the turn bound.
    for (let seq = 1; seq <= 10; seq++) {
      committed.push(batcher.ack('a', seq));
      clock.advance(30);
      await turns(1);
    }
    expect(store.commits.length).toBeGreaterThanOrEqual(2);
    await withinHangBound(batcher.flush(), 'the flush');
    expect(await Promise.all(committed)).toEqual(committed.map(() => true));
  });

  it('commits held acks at once with an append, and on flush', async () => {
    const store = new FakeOutboxStore();
    const batcher = new OutboxBatcher(store.asStore());
    const acked = batcher.ack('a', 1);
    await turns(1);
    const held = batcher.ack('a', 2);
    const appended = batcher.append(appendRequest('b'));
    expect(await withinHangBound(appended, 'the append')).toEqual([{ id: 'b-m', seq: 1, isDuplicate: false }]);
    expect(await acked).toBe(true);
    expect(await held).toBe(true);
    expect(store.commits).toEqual([{ appends: [appendRequest('b')], acks: [{ agentId: 'a', seq: 2 }] }]);

    const flushed = batcher.ack('a', 3);
    await withinHangBound(batcher.flush(), 'the flush');
    expect(store.commits.at(-1)).toEqual({ appends: [], acks: [{ agentId: 'a', seq: 3 }] });
    expect(await flushed).toBe(true);
  });

  it('reports acks of a failed commit as not committed, and rejects its appends', async () => {
    const store = new FakeOutboxStore();
    const batcher = new OutboxBatcher(store.asStore());
    store.isFailing = true;
    const acked = batcher.ack('a', 1);
    const appended = batcher.append(appendRequest('a'));
    await expect(withinHangBound(appended, 'the append')).rejects.toThrow('disk full');
    expect(await acked).toBe(false);
  });
});
