/** The admin-token and audit store contracts, on the SQLite store (a fresh file per test). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { adminTokenStoreContract, type StoreUnderTest } from './admin-token-store.contract.js';
import { auditStoreContract } from './audit-store.contract.js';

function openSqlite(): Promise<StoreUnderTest<SqliteStore>> {
  const dir = mkdtempSync(join(tmpdir(), 'tether-admin-audit-store-'));
  const store = SqliteStore.open(join(dir, 'tether.db'));
  return Promise.resolve({
    store,
    close: async () => {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  });
}

adminTokenStoreContract('SqliteStore', openSqlite);
auditStoreContract('SqliteStore', openSqlite);
