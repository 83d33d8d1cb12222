/**
 * What only the PostgreSQL store has: concurrent writers on separate
 * connections made to meet for real (each queued behind a gate transaction
 * holding the contested row, then released at once), migrations under an
 * advisory lock, connection settings, typed errors without passwords, and the
 * epoch step after a restore.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ClosedError, UnavailableError } from '../../../common/errors.js';
import { PostgresSchemaTooNewError, POSTGRES_SCHEMA_VERSION } from '../../../control-plane/store/postgres-schema.js';
import { PostgresStore } from '../../../control-plane/store/postgres-store.js';
import { RESTORE_GENERATION_GAP } from '../../../control-plane/store/sqlite-backup.js';
import type { AppendResult } from '../../../control-plane/store/store.js';
import { adminQuery, createTestSchema, isPostgresAvailable, lockGate, type TestSchema } from '../../support/postgres.js';
import { agent, host, NOW, signingKey } from '../../support/store-records.js';

const isAvailable = await isPostgresAvailable('the PostgreSQL store tests');

describe.runIf(isAvailable)('PostgresStore', () => {
  let schema: TestSchema;
  let stores: PostgresStore[];

  beforeEach(async () => {
    schema = await createTestSchema();
    stores = [];
  });

  afterEach(async () => {
    for (const store of stores) await store.close();
    await schema.drop();
  });

  async function open(poolSize = 4): Promise<PostgresStore> {
    const store = await PostgresStore.open(schema.url, { poolSize });
    stores.push(store);
    return store;
  }

  describe('concurrent writers met behind a gate', () => {
    it('gives 50 appends to one outbox, released at once, gapless seqs that become visible in order', async () => {
      const store = await open(50);
      await store.insertAgent(agent('bob'));
      const gate = await lockGate(schema, "SELECT 1 FROM agents WHERE agent_id = 'bob' FOR UPDATE");
      const appends = Array.from({ length: 50 }, (_, i) =>
        store.applyOutboxBatch({
          appends: [
            {
              agentId: 'bob',
              sender: { kind: 'operator' },
              maxPending: 100,
              maxPendingBytes: 1 << 20,
              messages: [{ id: `m${i}`, contentType: 'text/plain', payload: Buffer.from(`m${i}`), createdAtMs: NOW, idempotencyKey: null }],
            },
          ],
          acks: [],
        }),
      );
      let isDone = false;
      const all = Promise.all(appends).finally(() => {
        isDone = true;
      });
      await gate.waitForWaiters(50);
      await gate.release();
      // A reader (a host resuming from its acked seq) never sees seq n before n - 1: no gap it would wait on.
      const reader = await PostgresStore.open(schema.url, { poolSize: 1 });
      stores.push(reader);
      let reads = 0;
      for (; !isDone && reads < 10_000; reads++) {
        const seqs = (await reader.listDeliverable('bob', 0, 100)).map((m) => m.seq);
        expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));
      }
      const results = await all;
      const seqs = results.map((r) => (r[0] as AppendResult[])[0]?.seq ?? -1).sort((a, b) => a - b);
      expect(seqs).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
      expect((await store.getAgent('bob'))?.lastSeq).toBe(50);
    });

    it('leases one join token to one of two sessions on two control planes', async () => {
      const [a, b] = [await open(), await open()];
      await a.insertHost(host('h1'));
      const gate = await lockGate(schema, "SELECT 1 FROM hosts WHERE host_id = 'h1' FOR UPDATE");
      const live = new Set(['s1', 's2']);
      const leases = Promise.all([a.leaseJoinToken('h1', 's1', NOW, (id) => live.has(id)), b.leaseJoinToken('h1', 's2', NOW, (id) => live.has(id))]);
      await gate.waitForWaiters(2);
      await gate.release();
      const results = await leases;
      expect(results.filter((r) => r !== undefined)).toHaveLength(1);
      expect((await a.getHost('h1'))?.joinLeaseSessionId).toBe(results.find((r) => r !== undefined)?.joinLeaseSessionId);
    });

    it('places no more agents on a host than its capacity when 10 placements meet', async () => {
      const store = await open(10);
      await store.insertHost(host('h1', { capacity: 3 }));
      for (let i = 0; i < 10; i++) await store.insertAgent(agent(`a${i}`, { hostId: null, state: 'pending', incarnation: 0 }));
      const gate = await lockGate(schema, "SELECT 1 FROM hosts WHERE host_id = 'h1' FOR UPDATE");
      const placements = Promise.all(
        Array.from({ length: 10 }, (_, i) => store.placeAgent(`a${i}`, { hostId: 'h1', state: 'starting', incarnation: 1 }, { states: ['pending'] })),
      );
      await gate.waitForWaiters(10);
      await gate.release();
      const outcomes = await placements;
      expect(outcomes.filter((o) => o.outcome === 'placed')).toHaveLength(3);
      expect((await store.getHostLoads(['h1'])).get('h1')?.load).toBe(3);
      expect((await store.countAgentsByHost(['starting'])).get('h1')).toBe(3);
    });

    it('lets one of two key rotations that read the same keys win, leaving one signing key', async () => {
      const [a, b] = [await open(), await open()];
      await a.insertSigningKey(signingKey('s1', NOW, 'signing'));
      await a.insertSigningKey(signingKey('b1', NOW + 1, 'standby'));
      const promote = [
        { kid: 's1', from: 'signing', to: 'verifying-only', atMs: NOW + 5, verifyUntilMs: NOW + 10 },
        { kid: 'b1', from: 'standby', to: 'signing', atMs: NOW + 5 },
      ] as const;
      const gate = await lockGate(schema, "SELECT 1 FROM signing_keys WHERE kid = 's1' FOR UPDATE");
      const rotations = Promise.all([a.transitionSigningKeys(promote), b.transitionSigningKeys(promote)]);
      await gate.waitForWaiters(2);
      await gate.release();
      expect([...(await rotations)].sort()).toEqual([false, true]);
      expect((await a.listSigningKeys()).filter((k) => k.state === 'signing').map((k) => k.kid)).toEqual(['b1']);
    });
  });

  describe('migrations', () => {
    it('makes one schema when four control planes open an empty database at once', async () => {
      const opened = await Promise.all(Array.from({ length: 4 }, () => open(1)));
      expect(new Set(await Promise.all(opened.map((s) => s.epoch()))).size).toBe(1);
      expect(await adminQuery(`SELECT version FROM ${schema.name}.tether_schema`)).toEqual([{ version: POSTGRES_SCHEMA_VERSION }]);
      await opened[0]?.insertAgent(agent('a1'));
      expect((await opened[3]?.getAgent('a1'))?.agentId).toBe('a1');
    });

    it('refuses a database a newer Tether migrated, with a typed error naming both versions', async () => {
      await (await open()).close();
      await adminQuery(`UPDATE ${schema.name}.tether_schema SET version = 99`);
      const refused = PostgresStore.open(schema.url);
      await expect(refused).rejects.toBeInstanceOf(PostgresSchemaTooNewError);
      await expect(refused).rejects.toThrow(`schema version 99, newer than this control plane's ${POSTGRES_SCHEMA_VERSION}`);
    });

    it('keeps its epoch across reopenings', async () => {
      const first = await open();
      const epoch = await first.epoch();
      await first.close();
      expect(await (await open()).epoch()).toBe(epoch);
    });
  });

  describe('connections', () => {
    it('sets lock and idle-in-transaction timeouts on every connection and leaves synchronous_commit on', async () => {
      const store = await open(1);
      expect(await store.sessionSettings()).toEqual({
        lock_timeout: '5s',
        idle_in_transaction_session_timeout: '1min',
        statement_timeout: '1min',
        synchronous_commit: 'on',
      });
    });

    it('gives up on a row locked past lock_timeout with UnavailableError, having written nothing', async () => {
      const store = await PostgresStore.open(schema.url, { poolSize: 1, lockTimeoutMs: 100 });
      stores.push(store);
      await store.insertAgent(agent('a1'));
      const gate = await lockGate(schema, "SELECT 1 FROM agents WHERE agent_id = 'a1' FOR UPDATE");
      try {
        await expect(store.updateAgent('a1', { detail: 'blocked' })).rejects.toBeInstanceOf(UnavailableError);
      } finally {
        await gate.release();
      }
      expect((await store.getAgent('a1'))?.detail).toBe('');
    });

    it('answers an unreachable server with UnavailableError naming the URL without its password', async () => {
      const failed = await PostgresStore.open('postgres://tether:hunter2-secret@127.0.0.1:1/tether').then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(failed).toBeInstanceOf(UnavailableError);
      expect((failed as Error).message).toContain('postgres://tether:***@127.0.0.1:1/tether');
      expect((failed as Error).message).not.toContain('hunter2');
    });

    it('rejects calls after close with ClosedError', async () => {
      const store = await open();
      await store.close();
      await store.close();
      await expect(store.getAgent('a1')).rejects.toBeInstanceOf(ClosedError);
      await expect(store.applyOutboxBatch({ appends: [], acks: [] })).rejects.toBeInstanceOf(ClosedError);
    });
  });

  describe('a new epoch after a restore', () => {
    it('mints a new epoch, advances every generation past the lost history, and burns unused join tokens', async () => {
      const store = await open();
      await store.insertAgent(agent('a1', { generation: 7 }));
      await store.insertHost(host('used', { state: 'active', joinSecretHash: null, credentialGeneration: 3 }));
      await store.insertHost(host('unused', { joinLeaseSessionId: 's1' }));
      const before = await store.epoch();
      const summary = await store.startNewEpoch();
      expect(summary).toEqual({ previousEpoch: before, epoch: await store.epoch(), joinTokensBurnt: 1, hosts: 2, agents: 1 });
      expect(summary.epoch).not.toBe(before);
      expect((await store.getAgent('a1'))?.generation).toBe(7 + RESTORE_GENERATION_GAP);
      expect((await store.getHost('used'))?.credentialGeneration).toBe(3 + RESTORE_GENERATION_GAP);
      expect(await store.getHost('unused')).toMatchObject({ joinSecretHash: null, joinLeaseSessionId: null });
    });
  });
});
