/**
 * A restore does not bring back access taken away after the backup: an admin
 * token retired since stays retired, and one added since is kept.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AdminTokenRecord } from '../../../control-plane/store/admin-token-store.js';
import { backupDatabase, restoreDatabase } from '../../../control-plane/store/sqlite-backup.js';
import { databasePath, SqliteStore } from '../../../control-plane/store/sqlite-store.js';

const NOW = 1_800_000_000_000;

function token(tokenId: string): AdminTokenRecord {
  return { tokenId, name: tokenId, role: 'admin', secretHash: 'cd'.repeat(32), createdAtMs: NOW, createdBy: 'bootstrap', retiredAtMs: null };
}

describe('restore and admin tokens', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-token-restore-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps a retirement made after the backup, and a token added after it', async () => {
    const dbPath = databasePath(dir);
    let store = SqliteStore.open(dbPath);
    await store.insertAdminToken(token('00000000000000aa'));
    await store.insertAdminToken(token('00000000000000bb'));
    await store.close();
    const backupPath = join(dir, 'backup.db');
    backupDatabase(dbPath, backupPath);

    store = SqliteStore.open(dbPath);
    await store.retireAdminToken('00000000000000aa', NOW + 5);
    await store.insertAdminToken(token('00000000000000cc'));
    await store.close();

    const summary = restoreDatabase(dbPath, backupPath, NOW + 10);
    expect(summary.adminTokensCarried).toBe(2);
    store = SqliteStore.open(dbPath);
    try {
      const tokens = await store.listAdminTokens(null, 10);
      expect(tokens.map((t) => [t.tokenId, t.retiredAtMs])).toEqual([
        ['00000000000000aa', NOW + 5],
        ['00000000000000bb', null],
        ['00000000000000cc', null],
      ]);
    } finally {
      await store.close();
    }
  });
});
