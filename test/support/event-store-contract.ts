/**
 * What every {@link EventStore} must do, as one function per engine to call
 * with a factory of fresh, empty stores (SQLite here; PostgreSQL can run the
 * same cases): ids increase and are never reused, filters match as
 * {@link matchesEventFilter} does, and pruning keeps a suffix in id order.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ANY_EVENT, matchesEventFilter, type EventFilter, type EventStore, type NewEventRecord } from '../../control-plane/store/event-store.js';

/** A fresh store for one case, and how to dispose of it. */
export interface EventStoreFixture {
  store: EventStore;
  close: () => Promise<void>;
}

const T0 = 1_700_000_000_000;

/** A new event with defaults for what a case does not care about. */
export function newEvent(overrides: Partial<NewEventRecord> = {}): NewEventRecord {
  return { atMs: T0, kind: 'agent.placed', agentId: 'a1', hostId: 'h1', incarnation: 1, generation: 1, keyId: '', reason: '', detail: 'placed', ...overrides };
}

/** Registers the contract cases under `name`, each on a store from `open`. */
export function eventStoreContract(name: string, open: () => Promise<EventStoreFixture>): void {
  describe(`${name}: EventStore contract`, () => {
    let fixture: EventStoreFixture;
    let store: EventStore;

    beforeEach(async () => {
      fixture = await open();
      store = fixture.store;
    });

    afterEach(async () => {
      await fixture.close();
    });

    it('starts empty, gives increasing ids in order, and reads back every field', async () => {
      expect(await store.eventIdRange()).toEqual({ firstId: 1, lastId: 0 });
      const first = await store.appendEvents([newEvent({ detail: 'one' }), newEvent({ kind: 'credential.rotated', reason: 'due', generation: 2, detail: 'two' })]);
      const second = await store.appendEvents([newEvent({ kind: 'key.revoked', agentId: '', hostId: '', keyId: 'k1', detail: 'three' })]);
      const ids = [...first, ...second].map((e) => e.id);
      expect(ids).toEqual([...ids].sort((a, b) => a - b));
      expect(new Set(ids).size).toBe(3);
      expect(await store.appendEvents([])).toEqual([]);
      const range = await store.eventIdRange();
      expect(range).toEqual({ firstId: ids[0], lastId: ids[2] });
      expect(await store.listEvents(0, range.lastId, ANY_EVENT, 10)).toEqual([...first, ...second]);
      expect(second[0]).toMatchObject({ kind: 'key.revoked', keyId: 'k1', agentId: '', detail: 'three' });
    });

    it('lists within (afterId, untilId], at most limit, with the filter the bus uses', async () => {
      const kinds = ['agent.placed', 'credential.rotated', 'host.connected'] as const;
      const appended = await store.appendEvents(
        Array.from({ length: 30 }, (_, i) => newEvent({ kind: kinds[i % 3], agentId: i % 3 === 2 ? '' : `a${i % 2}`, hostId: `h${i % 5}`, atMs: T0 + i })),
      );
      const lastId = appended[29]?.id ?? 0;
      const cut = appended[9]?.id ?? 0;
      const filters: EventFilter[] = [
        ANY_EVENT,
        { agentId: 'a1', hostId: '', kinds: [] },
        { agentId: '', hostId: 'h3', kinds: [] },
        { agentId: '', hostId: '', kinds: ['credential.rotated', 'host.connected'] },
        { agentId: 'a0', hostId: 'h2', kinds: ['agent.placed'] },
        { agentId: 'nobody', hostId: '', kinds: [] },
      ];
      for (const filter of filters) {
        const expected = appended.filter((e) => e.id > cut && e.id <= lastId - 2 && matchesEventFilter(e, filter));
        expect(await store.listEvents(cut, lastId - 2, filter, 100), JSON.stringify(filter)).toEqual(expected);
        expect(await store.listEvents(cut, lastId - 2, filter, 3)).toEqual(expected.slice(0, 3));
      }
    });

    it('prunes by age and by count, oldest first, a bounded number at a time, and never reuses an id', async () => {
      const appended = await store.appendEvents(Array.from({ length: 20 }, (_, i) => newEvent({ atMs: T0 + i * 1_000 })));
      const id = (i: number): number => appended[i]?.id ?? -1;
      // Older than T0 + 5 s: the first five.
      expect(await store.pruneEvents(T0 + 5_000, 1_000, 1_000)).toBe(5);
      expect(await store.eventIdRange()).toEqual({ firstId: id(5), lastId: id(19) });
      // At most 3 a call, even with more due.
      expect(await store.pruneEvents(T0 + 12_000, 1_000, 3)).toBe(3);
      expect((await store.eventIdRange()).firstId).toBe(id(8));
      // The newest 4 kept by count.
      expect(await store.pruneEvents(0, 4, 1_000)).toBe(8);
      expect(await store.eventIdRange()).toEqual({ firstId: id(16), lastId: id(19) });
      expect(await store.pruneEvents(0, 4, 1_000)).toBe(0);
      // Everything older: none kept, and the next id is still past every id given.
      expect(await store.pruneEvents(T0 + 60_000, 100, 1_000)).toBe(4);
      expect(await store.eventIdRange()).toEqual({ firstId: id(19) + 1, lastId: id(19) });
      expect(await store.listEvents(0, id(19), ANY_EVENT, 100)).toEqual([]);
      const [next] = await store.appendEvents([newEvent()]);
      expect(next?.id).toBeGreaterThan(id(19));
      expect(await store.eventIdRange()).toEqual({ firstId: next?.id, lastId: next?.id });
    });
  });
}
