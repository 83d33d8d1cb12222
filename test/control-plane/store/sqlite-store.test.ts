import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, ResourceExhaustedError } from '../../../common/errors.js';
import { SqliteStore, type SqliteStoreOptions } from '../../../control-plane/store/sqlite-store.js';
import { agent } from '../../support/store-records.js';

/** What only the embedded engine has: its pragmas and group commit. Everything every engine guarantees is in store-contract.ts. */
describe('SqliteStore', () => {
  let dir: string;
  let path: string;
  let stores: SqliteStore[];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-store-'));
    path = join(dir, 'tether.db');
    stores = [];
  });

  afterEach(async () => {
    for (const store of stores) await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function open(options?: SqliteStoreOptions): SqliteStore {
    const store = SqliteStore.open(path, options);
    stores.push(store);
    return store;
  }

  describe('durability and group commit', () => {
    /** Frames in the write-ahead log: each commit appends every page it changed, so this counts commits of one page. */
    function walFrames(store: SqliteStore): number {
      const [row] = store.pragma('wal_checkpoint(PASSIVE)') as { log: number }[];
      return row?.log ?? Number.NaN;
    }

    it('opens with synchronous = FULL: an answered write survives power loss, not only a process crash', () => {
      const store = open();
      expect(store.pragma('synchronous')).toEqual([{ synchronous: 2 }]);
    });

    it('commits the writes of one turn of the event loop together: one commit, not one per write', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      store.pragma('wal_checkpoint(TRUNCATE)');
      const writes = Array.from({ length: 100 }, (_, i) => store.updateAgent('a1', { detail: `status ${i}` }));
      // Queued, not written yet: even the store's own reads see none of them.
      expect((await store.getAgent('a1'))?.detail).toBe('');
      await Promise.all(writes);
      expect((await store.getAgent('a1'))?.detail).toBe('status 99');
      // The agent's row lives in one page: one commit wrote it once (plus at most a few other pages).
      expect(walFrames(store)).toBeLessThan(10);
    });

    it('commits each write alone without group commit (what the test above tells apart)', async () => {
      const store = open({ isGroupCommit: false });
      await store.insertAgent(agent('a1'));
      store.pragma('wal_checkpoint(TRUNCATE)');
      await Promise.all(Array.from({ length: 100 }, (_, i) => store.updateAgent('a1', { detail: `status ${i}` })));
      expect(walFrames(store)).toBeGreaterThanOrEqual(100);
    });

    it("rejects only the failing write of a group; the others commit", async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      const results = await Promise.allSettled([
        store.insertAgent(agent('a2')),
        store.insertAgent(agent('a1', { name: 'duplicate' })),
        store.updateAgent('a1', { detail: 'after the failure' }),
      ]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
      expect((results[1] as PromiseRejectedResult).reason).toBeInstanceOf(AlreadyExistsError);
      expect((await store.getAgent('a2'))?.agentId).toBe('a2');
      expect(await store.getAgent('a1')).toEqual(agent('a1', { detail: 'after the failure' }));
    });

    it('rejects only a failing one-statement patch of a group (run without a savepoint); the writes around it commit', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      const results = await Promise.allSettled([
        store.patchAgent('a1', { detail: 'before' }, {}),
        // NOT NULL refuses it: the statement is undone, the transaction goes on.
        store.patchAgent('a1', { detail: null as unknown as string, generation: 9 }, {}),
        store.insertAgent(agent('a2')),
        store.patchAgent('a1', { tokenId: 'after' }, { generation: 1 }),
      ]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
      expect((results[3] as PromiseFulfilledResult<boolean>).value).toBe(true);
      expect(await store.getAgent('a1')).toEqual(agent('a1', { detail: 'before', tokenId: 'after' }));
      expect((await store.getAgent('a2'))?.agentId).toBe('a2');
    });

    it('decides conditional updates of one group in the order they were made, each against the ones before', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      const [first, second] = await Promise.all([
        store.updateAgent('a1', { generation: 2, tokenId: 'first' }, { generation: 1 }),
        store.updateAgent('a1', { generation: 2, tokenId: 'second' }, { generation: 1 }),
      ]);
      expect(first?.tokenId).toBe('first');
      expect(second).toBeUndefined();
      expect((await store.getAgent('a1'))?.tokenId).toBe('first');
    });

    it('bounds one commit: what is left goes in the next turn', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      let settled = 0;
      const writes = Array.from({ length: 1_100 }, (_, i) => store.updateAgent('a1', { detail: `status ${i}` }).then(() => settled++));
      await new Promise((resolve) => setImmediate(resolve));
      expect(settled).toBe(512);
      await Promise.all(writes);
      expect(settled).toBe(1_100);
      expect((await store.getAgent('a1'))?.detail).toBe('status 1099');
    });

    it('commits queued writes on close rather than dropping them', async () => {
      const first = open();
      const pending = first.insertAgent(agent('a1'));
      await first.close();
      await pending;
      const second = open();
      expect((await second.getAgent('a1'))?.agentId).toBe('a1');
    });

    it('answers a full disk with ResourceExhaustedError, and goes on once there is room', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      // A real SQLITE_FULL: the database may not grow past the pages it has now.
      const [{ page_count: pages }] = store.pragma('page_count') as [{ page_count: number }];
      store.pragma(`max_page_count = ${pages}`);
      const big = { kind: 'module', module: 'idle', command: '', args: [], config: 'x'.repeat(64 * 1024) };
      const results = await Promise.allSettled([store.updateAgent('a1', { detail: 'fits' }), store.insertAgent(agent('a2', { spec: big }))]);
      expect(results[0]?.status).toBe('fulfilled');
      expect(results[1]?.status).toBe('rejected');
      const error = (results[1] as PromiseRejectedResult).reason as Error;
      expect(error).toBeInstanceOf(ResourceExhaustedError);
      expect(error.message).toMatch(/the store is full/);
      expect((await store.getAgent('a1'))?.detail).toBe('fits');
      expect(await store.getAgent('a2')).toBeUndefined();

      store.pragma('max_page_count = 1073741823');
      await store.insertAgent(agent('a2', { spec: big }));
      expect((await store.getAgent('a2'))?.spec.config).toHaveLength(64 * 1024);
    });
  });
});
