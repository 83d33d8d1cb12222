/**
 * The EventStore contract on the PostgreSQL store (a fresh schema per case),
 * and what only a shared database shows: appends from several stores at once
 * (two control planes) take gapless ids in commit order.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../../control-plane/store/postgres-store.js';
import { ANY_EVENT } from '../../../control-plane/store/event-store.js';
import { eventStoreContract, newEvent } from '../../support/event-store-contract.js';
import { createTestSchema, isPostgresAvailable, lockGate, type TestSchema } from '../../support/postgres.js';

const isAvailable = await isPostgresAvailable('the PostgreSQL event store');

if (isAvailable) {
  eventStoreContract('PostgresStore', async () => {
    const schema = await createTestSchema();
    const store = await PostgresStore.open(schema.url, { poolSize: 2 });
    return {
      store,
      close: async () => {
        await store.close();
        await schema.drop();
      },
    };
  });

  describe('PostgresStore: events from several control planes on one database', () => {
    let schema: TestSchema;
    let stores: PostgresStore[];

    beforeEach(async () => {
      schema = await createTestSchema();
      stores = [await PostgresStore.open(schema.url, { poolSize: 4 }), await PostgresStore.open(schema.url, { poolSize: 4 })];
    });

    afterEach(async () => {
      for (const store of stores) await store.close();
      await schema.drop();
    });

    it('gives ids only to committed events, gapless and in commit order, even when appends meet', async () => {
      const [a, b] = stores as [PostgresStore, PostgresStore];
      await a.appendEvents([newEvent({ detail: 'before' })]);
      // Every appender queues behind the gate's lock on the id row, then they all go at once.
      const gate = await lockGate(schema, 'SELECT 1 FROM event_ids FOR UPDATE');
      const appends = Array.from({ length: 8 }, (_, i) => (i % 2 === 0 ? a : b).appendEvents([newEvent({ detail: `a${i}` }), newEvent({ detail: `b${i}` })]));
      await gate.waitForWaiters(8);
      await gate.release();
      const written = (await Promise.all(appends)).flat();
      const ids = written.map((e) => e.id).sort((x, y) => x - y);
      expect(ids).toEqual(Array.from({ length: 16 }, (_, i) => i + 2));
      // Each batch's ids are consecutive: one batch is never interleaved with another.
      for (let i = 0; i < written.length; i += 2) expect((written[i + 1]?.id ?? 0) - (written[i]?.id ?? 0)).toBe(1);
      const range = await b.eventIdRange();
      expect(range).toEqual({ firstId: 1, lastId: 17 });
      const listed = await a.listEvents(0, range.lastId, ANY_EVENT, 100);
      expect(listed.map((e) => e.id)).toEqual(Array.from({ length: 17 }, (_, i) => i + 1));
      expect(listed.find((e) => e.id === written[0]?.id)?.detail).toBe(written[0]?.detail);
    });

    it('takes no id for an append that fails: the next append gets the next id', async () => {
      const [a] = stores as [PostgresStore];
      await a.appendEvents([newEvent()]);
      // A detail with a NUL byte cannot be stored as text: the statement fails whole.
      await expect(a.appendEvents([newEvent(), newEvent({ detail: 'bad\u0000byte' })])).rejects.toThrow();
      expect(await a.eventIdRange()).toEqual({ firstId: 1, lastId: 1 });
      const [next] = await a.appendEvents([newEvent()]);
      expect(next?.id).toBe(2);
    });
  });
} else {
  describe.skip('EventStore: PostgreSQL (no server reachable)', () => {
    it('needs PostgreSQL', () => undefined);
  });
}
