/**
 * The admin-token and audit store contracts on the PostgreSQL store: a fresh
 * schema per test on the test server (skipped with a loud message when none is
 * reachable; a failure in CI).
 */
import { describe, it } from 'vitest';
import { PostgresStore } from '../../../control-plane/store/postgres-store.js';
import { createTestSchema, isPostgresAvailable } from '../../support/postgres.js';
import { adminTokenStoreContract, type StoreUnderTest } from './admin-token-store.contract.js';
import { auditStoreContract } from './audit-store.contract.js';

const isAvailable = await isPostgresAvailable('the PostgreSQL admin-token and audit store contracts');

async function openPostgres(): Promise<StoreUnderTest<PostgresStore>> {
  const schema = await createTestSchema();
  const store = await PostgresStore.open(schema.url, { poolSize: 2 });
  return {
    store,
    close: async () => {
      await store.close();
      await schema.drop();
    },
  };
}

if (isAvailable) {
  adminTokenStoreContract('PostgresStore', openPostgres);
  auditStoreContract('PostgresStore', openPostgres);
} else {
  describe.skip('admin-token and audit store contracts: PostgreSQL (no server reachable)', () => {
    it('needs PostgreSQL', () => undefined);
  });
}
