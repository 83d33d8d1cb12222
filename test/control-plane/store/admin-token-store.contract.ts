/**
 * What every {@link AdminTokenStore} does, as a function of a store factory: the
 * SQLite store runs it (admin-audit-store.test.ts), and so can any other engine.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError } from '../../../common/errors.js';
import type { AdminTokenRecord, AdminTokenStore } from '../../../control-plane/store/admin-token-store.js';

/** A fresh, empty store and how to dispose of it. */
export interface StoreUnderTest<S> {
  store: S;
  close: () => Promise<void>;
}

const NOW = 1_700_000_000_000;

function token(tokenId: string, overrides: Partial<AdminTokenRecord> = {}): AdminTokenRecord {
  return { tokenId, name: `name of ${tokenId}`, role: 'viewer', secretHash: 'ab'.repeat(32), createdAtMs: NOW, createdBy: 'bootstrap', retiredAtMs: null, ...overrides };
}

/** The contract of an AdminTokenStore, run against stores `open` makes. */
export function adminTokenStoreContract(engine: string, open: () => Promise<StoreUnderTest<AdminTokenStore>>): void {
  describe(`${engine}: AdminTokenStore`, () => {
    let under: StoreUnderTest<AdminTokenStore>;
    beforeEach(async () => {
      under = await open();
    });
    afterEach(async () => {
      await under.close();
    });

    it('keeps a token as given, refuses a second one with its id, and finds nothing for an unknown id', async () => {
      const { store } = under;
      const first = token('00aa', { role: 'admin', name: 'ops' });
      await store.insertAdminToken(first);
      expect(await store.getAdminToken('00aa')).toEqual(first);
      await expect(store.insertAdminToken(token('00aa'))).rejects.toBeInstanceOf(AlreadyExistsError);
      expect(await store.getAdminToken('00aa')).toEqual(first);
      expect(await store.getAdminToken('nope')).toBeUndefined();
    });

    it('lists in id order, page by page, retired tokens included', async () => {
      const { store } = under;
      for (const id of ['03', '01', '02', '04']) await store.insertAdminToken(token(id));
      await store.retireAdminToken('02', NOW + 1);
      expect((await store.listAdminTokens(null, 3)).map((t) => t.tokenId)).toEqual(['01', '02', '03']);
      expect((await store.listAdminTokens('03', 3)).map((t) => t.tokenId)).toEqual(['04']);
      expect((await store.listAdminTokens(null, 10)).find((t) => t.tokenId === '02')?.retiredAtMs).toBe(NOW + 1);
    });

    it('retires once (a second retirement keeps the first time) and answers undefined for no such token', async () => {
      const { store } = under;
      await store.insertAdminToken(token('0b'));
      expect(await store.retireAdminToken('0b', NOW + 10)).toMatchObject({ tokenId: '0b', retiredAtMs: NOW + 10 });
      expect(await store.retireAdminToken('0b', NOW + 20)).toMatchObject({ retiredAtMs: NOW + 10 });
      expect((await store.getAdminToken('0b'))?.retiredAtMs).toBe(NOW + 10);
      expect(await store.retireAdminToken('none', NOW)).toBeUndefined();
      // A retired id stays taken: it is never issued again.
      await expect(store.insertAdminToken(token('0b'))).rejects.toBeInstanceOf(AlreadyExistsError);
    });
  });
}
