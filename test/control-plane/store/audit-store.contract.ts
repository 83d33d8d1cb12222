/**
 * What every {@link AuditStore} does, as a function of a store factory: the
 * SQLite store runs it (admin-audit-store.test.ts), and so can any other engine.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AuditRecord, AuditStore } from '../../../control-plane/store/audit-store.js';
import type { StoreUnderTest } from './admin-token-store.contract.js';

const NOW = 1_700_000_000_000;

function entry(atMs: number, tokenId = 'bootstrap', method = 'ListAgents'): Omit<AuditRecord, 'id'> {
  return { atMs, tokenId, method, targets: [{ kind: 'agent', id: `a-${atMs}` }], code: 0 };
}

/** The contract of an AuditStore, run against stores `open` makes. */
export function auditStoreContract(engine: string, open: () => Promise<StoreUnderTest<AuditStore>>): void {
  describe(`${engine}: AuditStore`, () => {
    let under: StoreUnderTest<AuditStore>;
    beforeEach(async () => {
      under = await open();
    });
    afterEach(async () => {
      await under.close();
    });

    it('appends with increasing ids and lists oldest first, after an id, by token and from a time', async () => {
      const { store } = under;
      const ids = [];
      for (let i = 0; i < 5; i++) ids.push(await store.appendAudit({ ...entry(NOW + i, i % 2 === 0 ? 'aa' : 'bb'), code: i }));
      expect([...ids].sort((a, b) => a - b)).toEqual(ids);
      expect(new Set(ids).size).toBe(5);
      const all = await store.listAudit({ afterId: 0, limit: 10 });
      expect(all).toEqual(ids.map((id, i) => ({ id, atMs: NOW + i, tokenId: i % 2 === 0 ? 'aa' : 'bb', method: 'ListAgents', targets: [{ kind: 'agent', id: `a-${NOW + i}` }], code: i })));
      expect((await store.listAudit({ afterId: ids[1] as number, limit: 2 })).map((r) => r.id)).toEqual(ids.slice(2, 4));
      expect((await store.listAudit({ afterId: 0, limit: 10, tokenId: 'bb' })).map((r) => r.id)).toEqual([ids[1], ids[3]]);
      expect((await store.listAudit({ afterId: 0, limit: 10, sinceMs: NOW + 3 })).map((r) => r.id)).toEqual(ids.slice(3));
      expect((await store.listAudit({ afterId: 0, limit: 10, tokenId: 'aa', sinceMs: NOW + 1 })).map((r) => r.id)).toEqual([ids[2], ids[4]]);
    });

    it('prunes by age, then by count (the oldest go), and never reuses an id', async () => {
      const { store } = under;
      for (let i = 0; i < 10; i++) await store.appendAudit(entry(NOW + i));
      // Older than NOW + 2: two go; then beyond the newest 5: three more.
      expect(await store.pruneAudit(NOW + 2, 5)).toBe(5);
      const kept = await store.listAudit({ afterId: 0, limit: 100 });
      expect(kept.map((r) => r.atMs)).toEqual([5, 6, 7, 8, 9].map((i) => NOW + i));
      expect(await store.pruneAudit(NOW, 5)).toBe(0);
      const lastId = kept.at(-1)?.id ?? 0;
      await store.pruneAudit(NOW + 100, 100);
      expect(await store.listAudit({ afterId: 0, limit: 100 })).toEqual([]);
      expect(await store.appendAudit(entry(NOW + 200))).toBeGreaterThan(lastId);
    });
  });
}
