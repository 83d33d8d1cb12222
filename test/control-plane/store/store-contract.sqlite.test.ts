/** The store contract on the embedded engine: a fresh SQLite file per test. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { describeStoreContract } from './store-contract.js';

/** Runs `sql` on its own read-only connection to the file at `path`. */
function readRaw<T>(path: string, sql: string, ...params: unknown[]): T {
  const db = new Database(path, { readonly: true });
  try {
    return db.prepare(sql).get(...params) as T;
  } finally {
    db.close();
  }
}

describeStoreContract('SQLite', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tether-store-contract-'));
  const path = join(dir, 'tether.db');
  return Promise.resolve({
    open: () => Promise.resolve(SqliteStore.open(path)),
    openOther: () => Promise.resolve(SqliteStore.open(join(dir, 'other.db'))),
    outboxBytes: (agentId) =>
      Promise.resolve(
        readRaw<{ counter: number; sum: number }>(
          path,
          `SELECT outbox_bytes AS counter,
             (SELECT COALESCE(SUM(length(payload)), 0) FROM messages WHERE agent_id = ? AND state IN ('pending', 'dead')) AS sum
           FROM agents WHERE agent_id = ?`,
          agentId,
          agentId,
        ),
      ),
    transitionRows: (agentId) => Promise.resolve(readRaw<{ n: number }>(path, 'SELECT COUNT(*) AS n FROM agent_state_history WHERE agent_id = ?', agentId).n),
    cleanup: () => {
      rmSync(dir, { recursive: true, force: true });
      return Promise.resolve();
    },
  });
});
