/**
 * The EventStore contract on the PostgreSQL store (a fresh schema per case),
 * and what only a shared database shows: appends from several stores at once
 * (two control planes) take gapless ids in commit order; a database at schema 1
 * gets the tables at open.
 */
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { migratePostgres } from '../../../control-plane/store/postgres-schema.js';
import { PostgresStore } from '../../../control-plane/store/postgres-store.js';
import { ANY_EVENT } from '../../../control-plane/store/event-store.js';
import { eventStoreContract, newEvent } from '../../support/event-store-contract.js';
import { adminQuery, createTestSchema, isPostgresAvailable, lockGate, type TestSchema } from '../../support/postgres.js';

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

  describe('PostgresStore: migration 2 on a database an older Tether made', () => {
    it('adds admin tokens, audit and events to a database at schema 1, keeping what it holds', async () => {
      const schema = await createTestSchema();
      const client = new pg.Client({ connectionString: schema.url });
      try {
        await client.connect();
        // As a binary of schema 1 left it: its epoch and a host.
        await migratePostgres(client as unknown as pg.PoolClient, 'old-epoch', { toVersion: 1 });
        await client.query(
          `INSERT INTO hosts (host_id, name, state, join_expires_at_ms, credential_generation, min_valid_generation, credential_expires_at_ms, capacity, labels, last_seen_ms, created_at_ms)
           VALUES ('h1', 'old', 'enrolled', 0, 0, 0, 0, 1, '[]', 0, 0)`,
        );
        expect((await client.query<{ version: number }>('SELECT version FROM tether_schema')).rows).toEqual([{ version: 1 }]);
        await client.end();
        const store = await PostgresStore.open(schema.url, { poolSize: 1 });
        try {
          expect(await adminQuery(`SELECT version FROM ${schema.name}.tether_schema`)).toEqual([{ version: 2 }]);
          expect(await store.epoch()).toBe('old-epoch');
          expect((await store.getHost('h1'))?.name).toBe('old');
          expect(await store.eventIdRange()).toEqual({ firstId: 1, lastId: 0 });
          expect((await store.appendEvents([newEvent()])).map((e) => e.id)).toEqual([1]);
          expect(await store.appendAudit({ atMs: 1, tokenId: 'bootstrap', method: 'ListAgents', targets: [], code: 0 })).toBe(1);
          expect(await store.listAdminTokens(null, 10)).toEqual([]);
        } finally {
          await store.close();
        }
      } finally {
        await client.end().catch(() => undefined);
        await schema.drop();
      }
    });
  });
} else {
  describe.skip('EventStore: PostgreSQL (no server reachable)', () => {
    it('needs PostgreSQL', () => undefined);
  });
}
