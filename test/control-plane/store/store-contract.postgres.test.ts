/**
 * The store contract on PostgreSQL: a fresh schema per test on the test server
 * (skipped with a loud message when none is reachable; a failure in CI).
 */
import { describe, it } from 'vitest';
import { PostgresStore } from '../../../control-plane/store/postgres-store.js';
import { adminQuery, createTestSchema, isPostgresAvailable, type TestSchema } from '../../support/postgres.js';
import { describeStoreContract } from './store-contract.js';

const isAvailable = await isPostgresAvailable('the PostgreSQL store contract');

if (isAvailable) {
  describeStoreContract('PostgreSQL', async () => {
    const schemas: TestSchema[] = [await createTestSchema()];
    const main = schemas[0] as TestSchema;
    return {
      open: () => PostgresStore.open(main.url, { poolSize: 4 }),
      openOther: async () => {
        const other = await createTestSchema();
        schemas.push(other);
        return PostgresStore.open(other.url, { poolSize: 2 });
      },
      outboxBytes: async (agentId) => {
        const [row] = await adminQuery<{ counter: string; sum: string }>(
          `SELECT outbox_bytes AS counter,
             (SELECT COALESCE(SUM(octet_length(payload)), 0) FROM ${main.name}.messages WHERE agent_id = $1 AND state IN ('pending', 'dead')) AS sum
           FROM ${main.name}.agents WHERE agent_id = $1`,
          [agentId],
        );
        return { counter: Number(row?.counter), sum: Number(row?.sum) };
      },
      transitionRows: async (agentId) => {
        const [row] = await adminQuery<{ n: string }>(`SELECT COUNT(*) AS n FROM ${main.name}.agent_state_history WHERE agent_id = $1`, [agentId]);
        return Number(row?.n);
      },
      cleanup: async () => {
        for (const schema of schemas) await schema.drop();
      },
    };
  });
} else {
  describe.skip('Store contract: PostgreSQL (no server reachable)', () => {
    it('needs PostgreSQL', () => undefined);
  });
}
