/**
 * Backup and restore of the embedded store, on real files: what a backup
 * holds, and what a restore changes (a new epoch, generations past the lost
 * history, join tokens burnt, newer signing keys kept) and refuses (a running
 * control plane, a damaged or foreign backup).
 */
import { spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  backupDatabase,
  BackupError,
  claimDatabase,
  pidFilePath,
  restoreDatabase,
  RESTORE_GENERATION_GAP,
  runningPid,
} from '../../../control-plane/store/sqlite-backup.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { agent, host, NOW, signingKey } from '../../support/store-records.js';
import { HANG_BOUND_MS, nextEvent } from '../../support/wait.js';

describe('backup and restore of the SQLite store', () => {
  let dir: string;
  let dbPath: string;
  let backupPath: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-backup-'));
    dbPath = join(dir, 'tether.db');
    backupPath = join(dir, 'backup.db');
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** A store with a joined host, an enrolled one not joined yet, two agents (one with mail), and a signing key. */
  async function populate(): Promise<SqliteStore> {
    const store = SqliteStore.open(dbPath);
    await store.insertSigningKey(signingKey('k1', NOW));
    await store.insertHost(host('joined', { state: 'active', joinSecretHash: null, credentialGeneration: 3, minValidGeneration: 3 }));
    await store.insertHost(host('waiting'));
    await store.insertAgent(agent('a1', { hostId: 'joined', generation: 7 }));
    await store.insertAgent(agent('a2', { hostId: 'joined', generation: 2 }));
    await store.applyOutboxBatch({
      appends: [
        {
          agentId: 'a1',
          sender: { kind: 'operator' },
          maxPending: 100,
          maxPendingBytes: 1024,
          messages: ['m1', 'm2'].map((id) => ({ id, contentType: 'text/plain', payload: Buffer.from(id), createdAtMs: NOW, idempotencyKey: null })),
        },
      ],
      acks: [],
    });
    return store;
  }

  it('writes a consistent, self-contained copy (mode 0600) while the store is open and written to', async () => {
    const store = await populate();
    const summary = backupDatabase(dbPath, backupPath);
    expect(summary).toMatchObject({ epoch: await store.epoch(), hosts: 2, agents: 2, pendingMessages: 2 });
    expect(summary.bytes).toBe(statSync(backupPath).size);
    expect(statSync(backupPath).mode & 0o777).toBe(0o600);
    expect(existsSync(`${backupPath}-wal`)).toBe(false);
    // Writes after the backup are not in it.
    await store.insertAgent(agent('a3'));
    const copy = new Database(backupPath, { readonly: true });
    expect((copy.prepare('SELECT agent_id FROM agents ORDER BY agent_id').all() as { agent_id: string }[]).map((r) => r.agent_id)).toEqual(['a1', 'a2']);
    copy.close();
    await store.close();
  });

  it('completes under a writer that never pauses, with a snapshot of what was committed when it began', async () => {
    // Big enough that a page-by-page copy takes many steps (the online backup API restarted on every
    // write from another connection, and with this writer it never finished).
    const store = await populate();
    const payload = Buffer.alloc(16 * 1024, 7);
    for (let batch = 0; batch < 20; batch += 1) {
      await store.applyOutboxBatch({
        appends: [
          {
            agentId: 'a2',
            sender: { kind: 'operator' },
            maxPending: 1_000_000,
            maxPendingBytes: 1024 ** 3,
            messages: Array.from({ length: 64 }, (_, i) => ({
              id: `bulk-${batch}-${i}`,
              contentType: 'application/octet-stream',
              payload,
              createdAtMs: NOW,
              idempotencyKey: null,
            })),
          },
        ],
        acks: [],
      });
    }
    const stop = new SharedArrayBuffer(4);
    const writer = new Worker(new URL('../../support/sqlite-writer-worker.mjs', import.meta.url), {
      workerData: { path: dbPath, stop, agentId: 'a1', maxWrites: 2_000_000, maxMs: HANG_BOUND_MS },
    });
    const finished = new Promise<{ writes: number; isStoppedByTest: boolean }>((resolve, reject) => {
      writer.on('message', (m: { writes?: number; isStoppedByTest?: boolean }) => {
        if (m.writes !== undefined) resolve({ writes: m.writes, isStoppedByTest: m.isStoppedByTest === true });
      });
      writer.on('error', reject);
    });
    try {
      await nextEvent(writer, 'message');
      const writesBefore = (await store.getAgent('a1'))?.lastSeq ?? 0;
      const summary = backupDatabase(dbPath, backupPath);
      const writesAfter = (await store.getAgent('a1'))?.lastSeq ?? 0;
      Atomics.store(new Int32Array(stop), 0, 1);
      const { writes, isStoppedByTest } = await finished;
      // The backup finished while the writer was still writing, not after it gave up.
      expect(isStoppedByTest).toBe(true);
      // The writer kept committing during the backup, and the backup holds one consistent state in between.
      expect(writesAfter).toBeGreaterThan(writesBefore);
      const copy = new Database(backupPath, { readonly: true });
      try {
        expect(copy.pragma('integrity_check', { simple: true })).toBe('ok');
        const a1 = copy.prepare("SELECT last_seq AS lastSeq FROM agents WHERE agent_id = 'a1'").get() as { lastSeq: number };
        const rows = (copy.prepare("SELECT count(*) AS n FROM messages WHERE agent_id = 'a1'").get() as { n: number }).n;
        expect(a1.lastSeq).toBeGreaterThanOrEqual(writesBefore);
        expect(a1.lastSeq).toBeLessThanOrEqual(writesAfter);
        expect(rows).toBe(a1.lastSeq);
        expect(summary.pendingMessages).toBe(rows + 64 * 20);
      } finally {
        copy.close();
      }
      expect(writes).toBeGreaterThan(0);
    } finally {
      Atomics.store(new Int32Array(stop), 0, 1);
      await finished.catch(() => undefined);
      await writer.terminate();
      await store.close();
    }
  });

  it('never overwrites an existing file, and refuses a data directory with no store', async () => {
    await (await populate()).close();
    writeFileSync(backupPath, 'precious');
    expect(() => backupDatabase(dbPath, backupPath)).toThrow(/already exists/);
    expect(readFileSync(backupPath, 'utf8')).toBe('precious');
    expect(() => backupDatabase(join(dir, 'nowhere.db'), join(dir, 'other.db'))).toThrow(BackupError);
  });

  it('restores into a new epoch: generations past the lost history, join tokens burnt, newer keys kept, the old store kept aside', async () => {
    const store = await populate();
    const firstEpoch = await store.epoch();
    backupDatabase(dbPath, backupPath);
    // The history the backup does not have: a new key, more credentials, more mail.
    await store.insertSigningKey(signingKey('k2', NOW + 1));
    await store.updateAgent('a1', { generation: 9 });
    await store.updateHost('joined', { credentialGeneration: 4 });
    await store.close();

    const summary = restoreDatabase(dbPath, backupPath, NOW);
    expect(summary).toMatchObject({ previousEpoch: firstEpoch, hosts: 2, agents: 2, pendingMessages: 2, joinTokensBurnt: 1, signingKeysKept: 1 });
    expect(summary.epoch).not.toBe(firstEpoch);
    expect(summary.replacedPath).toBe(`${dbPath}.replaced-2027-01-15T080000.000Z`);

    const restored = SqliteStore.open(dbPath);
    expect(await restored.epoch()).toBe(summary.epoch);
    expect((await restored.getAgent('a1'))?.generation).toBe(7 + RESTORE_GENERATION_GAP);
    expect((await restored.getAgent('a2'))?.generation).toBe(2 + RESTORE_GENERATION_GAP);
    expect(await restored.getHost('joined')).toMatchObject({ credentialGeneration: 3 + RESTORE_GENERATION_GAP, minValidGeneration: 3 });
    expect(await restored.getHost('waiting')).toMatchObject({ joinSecretHash: null, joinLeaseSessionId: null });
    expect((await restored.listSigningKeys()).map((k) => k.kid).sort()).toEqual(['k1', 'k2']);
    expect((await restored.listDeliverable('a1', 0, 10)).map((m) => m.id)).toEqual(['m1', 'm2']);
    expect(statSync(dbPath).mode & 0o777).toBe(0o600);
    await restored.close();

    // The replaced store is intact beside it, under the old epoch.
    const replaced = SqliteStore.open(summary.replacedPath ?? '');
    expect(await replaced.epoch()).toBe(firstEpoch);
    expect((await replaced.getAgent('a1'))?.generation).toBe(9);
    await replaced.close();
  });

  it('creates the restored store 0600 from the start, whatever the backup file\'s mode (never wider, then narrowed)', async () => {
    await (await populate()).close();
    backupDatabase(dbPath, backupPath);
    // A backup copied about with cp or scp ends up 0644; under umask 0 a copy taking its mode would be too.
    chmodSync(backupPath, 0o644);
    const previousUmask = process.umask(0);
    const stagedModes: number[] = [];
    try {
      restoreDatabase(dbPath, backupPath, NOW, { onStaged: (path) => stagedModes.push(statSync(path).mode & 0o777) });
    } finally {
      process.umask(previousUmask);
    }
    expect(stagedModes).toEqual([0o600]);
    expect(statSync(dbPath).mode & 0o777).toBe(0o600);
    const restored = SqliteStore.open(dbPath);
    expect((await restored.listHosts(null, 10)).items).toHaveLength(2);
    await restored.close();
  });

  it('restores into a data directory that does not exist yet (a new machine)', async () => {
    await (await populate()).close();
    backupDatabase(dbPath, backupPath);
    const fresh = join(dir, 'new-machine', 'data', 'tether.db');
    const summary = restoreDatabase(fresh, backupPath, NOW);
    expect(summary).toMatchObject({ hosts: 2, agents: 2, replacedPath: undefined, signingKeysKept: 0 });
    expect(statSync(join(dir, 'new-machine', 'data')).mode & 0o777).toBe(0o700);
    const restored = SqliteStore.open(fresh);
    expect(await restored.epoch()).toBe(summary.epoch);
    await restored.close();
  });

  it('mints a different epoch each time the same backup is restored', async () => {
    await (await populate()).close();
    backupDatabase(dbPath, backupPath);
    const first = restoreDatabase(dbPath, backupPath, NOW);
    const second = restoreDatabase(dbPath, backupPath, NOW + 1);
    expect(second.previousEpoch).toBe(first.previousEpoch);
    expect(new Set([first.previousEpoch, first.epoch, second.epoch]).size).toBe(3);
  });

  it('refuses while a live process serves the store, and leaves it untouched', async () => {
    const store = await populate();
    const epoch = await store.epoch();
    backupDatabase(dbPath, backupPath);
    await store.close();
    // Our parent stands in for a control plane that is still running.
    writeFileSync(pidFilePath(dbPath), `${process.ppid}\n`);
    expect(runningPid(dbPath)).toBe(process.ppid);
    expect(() => restoreDatabase(dbPath, backupPath, NOW)).toThrow(new RegExp(`pid ${process.ppid}\\) serves .*stop it first`));
    const after = SqliteStore.open(dbPath);
    expect(await after.epoch()).toBe(epoch);
    await after.close();

    // A claim left by a process that is gone is stale: the restore goes ahead.
    const gone = spawnSync(process.execPath, ['-e', '0']).pid;
    writeFileSync(pidFilePath(dbPath), `${gone}\n`);
    expect(runningPid(dbPath)).toBeUndefined();
    expect(restoreDatabase(dbPath, backupPath, NOW).previousEpoch).toBe(epoch);
  });

  it('claims the store for this process and releases it; leaves another live process its claim', () => {
    writeFileSync(pidFilePath(dbPath), `${process.ppid}\n`);
    const beside = claimDatabase(dbPath);
    expect(beside.otherPid).toBe(process.ppid);
    beside.release();
    expect(runningPid(dbPath)).toBe(process.ppid);
    rmSync(pidFilePath(dbPath));

    const { release, otherPid } = claimDatabase(dbPath);
    expect(otherPid).toBeUndefined();
    expect(readFileSync(pidFilePath(dbPath), 'utf8').trim()).toBe(String(process.pid));
    expect(statSync(pidFilePath(dbPath)).mode & 0o777).toBe(0o600);
    expect(runningPid(dbPath)).toBe(process.pid);
    release();
    expect(existsSync(pidFilePath(dbPath))).toBe(false);
  });

  it.each([
    ['random bytes', (path: string): void => writeFileSync(path, Buffer.alloc(8192, 7))],
    [
      'an SQLite file that is not a Tether store',
      (path: string): void => {
        const db = new Database(path);
        db.exec('CREATE TABLE t (x)');
        db.close();
      },
    ],
  ])('refuses a backup that is %s, and leaves the store untouched', async (_what, make) => {
    const store = await populate();
    const epoch = await store.epoch();
    await store.close();
    make(backupPath);
    expect(() => restoreDatabase(dbPath, backupPath, NOW)).toThrow(BackupError);
    expect(() => restoreDatabase(dbPath, join(dir, 'missing.db'), NOW)).toThrow(/does not exist/);
    const after = SqliteStore.open(dbPath);
    expect(await after.epoch()).toBe(epoch);
    await after.close();
  });
});
