/**
 * Numbered migrations of the embedded store: stores written before migrations
 * were numbered (committed fixtures, each a real schema from the history) are
 * brought up to date on open, all in one transaction; a store from a newer
 * binary is refused without being touched; restore takes the same path.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ResourceExhaustedError } from '../../../common/errors.js';
import { BackupError, restoreDatabase } from '../../../control-plane/store/sqlite-backup.js';
import { migrate, SCHEMA_VERSION, SchemaTooNewError } from '../../../control-plane/store/sqlite-schema.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import type { AppendResult, MessageSender } from '../../../control-plane/store/store.js';
import { NOW } from '../../support/store-records.js';

const FIXTURES = join(import.meta.dirname, '..', '..', 'fixtures');

/** Writes the fixture `name` as a database file at `path`, as the release it comes from left it. */
function writeFixture(path: string, name: string): void {
  const db = new Database(path);
  try {
    db.exec(readFileSync(join(FIXTURES, name), 'utf8'));
  } finally {
    db.close();
  }
}

function readVersion(path: string): number {
  const db = new Database(path, { readonly: true });
  try {
    return db.pragma('user_version', { simple: true }) as number;
  } finally {
    db.close();
  }
}

function tableNames(path: string): string[] {
  const db = new Database(path, { readonly: true });
  try {
    return (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
  } finally {
    db.close();
  }
}

describe('SQLite schema migrations', () => {
  let dir: string;
  let path: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-schema-'));
    path = join(dir, 'tether.db');
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('gives a new store the current schema version', async () => {
    await SqliteStore.open(path).close();
    expect(readVersion(path)).toBe(SCHEMA_VERSION);
  });

  it('gives signing keys states: of the keys two racing rotations left unretired the newest signs, the others verify only; no retired key keeps its private half', async () => {
    writeFixture(path, 'store-unversioned.sql');
    const db = new Database(path);
    db.exec(`
      DELETE FROM signing_keys;
      INSERT INTO signing_keys (kid, private_jwk, public_jwk, created_at_ms, retired_at_ms, verify_until_ms) VALUES
        ('k-retired', '{"d":"secret-1"}', '{"x":"1"}', ${NOW - 3000}, ${NOW - 2000}, ${NOW + 1000}),
        ('k-raced-a', '{"d":"secret-2"}', '{"x":"2"}', ${NOW - 1000}, NULL, NULL),
        ('k-raced-b', '{"d":"secret-3"}', '{"x":"3"}', ${NOW - 500}, NULL, NULL);
    `);
    db.close();
    const store = SqliteStore.open(path);
    try {
      expect((await store.listSigningKeys()).map((k) => [k.kid, k.state, k.privateJwk, k.verifyUntilMs])).toEqual([
        ['k-retired', 'verifying-only', null, NOW + 1000],
        ['k-raced-a', 'verifying-only', null, null],
        ['k-raced-b', 'signing', '{"d":"secret-3"}', null],
      ]);
    } finally {
      await store.close();
    }
    // Nothing of the retired keys' private halves is left in the file's live pages.
    const raw = new Database(path, { readonly: true });
    try {
      const rows = raw.prepare('SELECT private_jwk FROM signing_keys WHERE private_jwk IS NOT NULL').all();
      expect(rows).toEqual([{ private_jwk: '{"d":"secret-3"}' }]);
    } finally {
      raw.close();
    }
  });

  it('migrates a store written by the last release without numbered migrations, keeping every row', async () => {
    writeFixture(path, 'store-unversioned.sql');
    expect(readVersion(path)).toBe(0);
    const store = SqliteStore.open(path);
    try {
      expect(readVersion(path)).toBe(SCHEMA_VERSION);
      expect(await store.epoch()).toBe('epoch-from-before-migrations');
      expect((await store.listSigningKeys()).map((k) => k.kid)).toEqual(['k-old']);
      expect(await store.getHost('h-old')).toMatchObject({ name: 'old-host', credentialGeneration: 3, labels: [{ key: 'zone', value: 'a' }] });
      expect(await store.getAgent('a-old')).toMatchObject({ generation: 7, lastSeq: 2, ackedSeq: 1, spec: { kind: 'module', module: 'echo' } });
      // Migration 2 counts each host's live agents into its load, which the store keeps from then on.
      expect((await store.getHostLoads(['h-old'])).get('h-old')?.load).toBe(1);
      const pending = await store.listDeliverable('a-old', 1, 10);
      expect(pending.map((m) => [m.seq, m.payload.toString(), m.idempotencyKey])).toEqual([[2, 'hi', 'key-2']]);
      // It goes on where it was: the next append takes the next seq, and the old idempotency key still
      // answers its sender (the fixture's `admin`: a name the operator never had, so an agent's).
      const [results] = await store.applyOutboxBatch({
        appends: [
          {
            agentId: 'a-old',
            sender: { kind: 'agent', agentId: 'admin' },
            maxPending: 10,
            maxPendingBytes: 1024,
            messages: [
              { id: 'm-3', contentType: 'text/plain', payload: Buffer.from('3'), createdAtMs: NOW, idempotencyKey: null },
              { id: 'm-again', contentType: 'text/plain', payload: Buffer.from('2'), createdAtMs: NOW, idempotencyKey: 'key-2' },
            ],
          },
        ],
        acks: [],
      });
      expect(results).toEqual([
        { id: 'm-3', seq: 3, isDuplicate: false },
        { id: 'm-2', seq: 2, isDuplicate: true },
      ]);
      await store.updateAgent('a-old', { state: 'exited' });
      expect((await store.getHostLoads(['h-old'])).get('h-old')?.load).toBe(0);
    } finally {
      await store.close();
    }
  });

  it('migrates a version 4 store: counts each outbox\'s bytes, and scopes its idempotency keys by the sender each message records', async () => {
    const db = new Database(path);
    migrate(db, 4);
    expect(readVersion(path)).toBe(4);
    const agentRow = (agentId: string, state: string): string =>
      `('${agentId}', '${agentId}', '${state}', NULL, '[]', '{}', 1, 1, NULL, 0, 0, 0, 0, 0, '', 5, 0)`;
    db.exec(`
      INSERT INTO agents (agent_id, name, state, host_id, host_labels, spec, incarnation, generation, token_id, issued_at_ms, expires_at_ms,
        rotation_due_at_ms, created_at_ms, updated_at_ms, detail, last_seq, acked_seq)
        VALUES ${agentRow('bob', 'running')}, ${agentRow('carol', 'running')}, ${agentRow('idle', 'running')};
      INSERT INTO messages (agent_id, seq, id, sender, content_type, payload, created_at_ms, state, attempts, last_error, idempotency_key) VALUES
        ('bob', 1, 'acked', 'alice', 'text/plain', x'', ${NOW}, 'acked', 0, '', NULL),
        ('bob', 2, 'from-alice', 'alice', 'text/plain', zeroblob(300), ${NOW}, 'pending', 0, '', 'K'),
        ('bob', 3, 'dead', 'operator', 'text/plain', zeroblob(200), ${NOW}, 'dead', 5, 'no', NULL),
        ('bob', 4, 'requeued', 'operator', 'text/plain', x'', ${NOW}, 'requeued', 5, 'no', NULL),
        ('bob', 5, 'from-operator', 'operator', 'text/plain', zeroblob(50), ${NOW}, 'pending', 0, '', 'L'),
        ('carol', 1, 'c1', 'operator', 'text/plain', zeroblob(7), ${NOW}, 'pending', 0, '', NULL);
    `);
    db.close();
    const store = SqliteStore.open(path);
    try {
      expect(readVersion(path)).toBe(SCHEMA_VERSION);
      const raw = new Database(path, { readonly: true });
      try {
        expect(raw.prepare('SELECT agent_id, outbox_bytes FROM agents ORDER BY agent_id').all()).toEqual([
          { agent_id: 'bob', outbox_bytes: 550 },
          { agent_id: 'carol', outbox_bytes: 7 },
          { agent_id: 'idle', outbox_bytes: 0 },
        ]);
      } finally {
        raw.close();
      }
      const send = async (sender: MessageSender, id: string, key: string): Promise<AppendResult[] | Error | undefined> =>
        (
          await store.applyOutboxBatch({
            appends: [
              {
                agentId: 'bob',
                sender,
                maxPending: 100,
                maxPendingBytes: 1024,
                messages: [{ id, contentType: 'text/plain', payload: Buffer.from('x'), createdAtMs: NOW, idempotencyKey: key }],
              },
            ],
            acks: [],
          })
        )[0];
      // The old rows' keys answer their own sender only.
      expect(await send({ kind: 'agent', agentId: 'alice' }, 'alice-retry', 'K')).toEqual([{ id: 'from-alice', seq: 2, isDuplicate: true }]);
      expect(await send({ kind: 'operator' }, 'operator-retry', 'L')).toEqual([{ id: 'from-operator', seq: 5, isDuplicate: true }]);
      expect(await send({ kind: 'operator' }, 'operator-k', 'K')).toEqual([{ id: 'operator-k', seq: 6, isDuplicate: false }]);
      expect(await send({ kind: 'agent', agentId: 'alice' }, 'alice-l', 'L')).toEqual([{ id: 'alice-l', seq: 7, isDuplicate: false }]);
    } finally {
      await store.close();
    }
  });

  it('migrates a version 6 store: counts each outbox\'s messages, which then cap appends and follow acks without a COUNT', async () => {
    const db = new Database(path);
    migrate(db, 6);
    expect(readVersion(path)).toBe(6);
    const agentRow = (agentId: string, lastSeq: number): string =>
      `('${agentId}', '${agentId}', 'running', NULL, '[]', '{}', 1, 1, NULL, 0, 0, 0, 0, 0, '', ${lastSeq}, 0)`;
    db.exec(`
      INSERT INTO agents (agent_id, name, state, host_id, host_labels, spec, incarnation, generation, token_id, issued_at_ms, expires_at_ms,
        rotation_due_at_ms, created_at_ms, updated_at_ms, detail, last_seq, acked_seq)
        VALUES ${agentRow('bob', 4)}, ${agentRow('idle', 0)};
      INSERT INTO messages (agent_id, seq, id, sender, sender_principal, content_type, payload, created_at_ms, state, attempts, last_error, idempotency_key) VALUES
        ('bob', 1, 'acked', 'operator', 'operator', 'text/plain', x'', ${NOW}, 'acked', 0, '', NULL),
        ('bob', 2, 'p2', 'operator', 'operator', 'text/plain', zeroblob(10), ${NOW}, 'pending', 0, '', NULL),
        ('bob', 3, 'dead', 'operator', 'operator', 'text/plain', zeroblob(20), ${NOW}, 'dead', 5, 'no', NULL),
        ('bob', 4, 'p4', 'operator', 'operator', 'text/plain', zeroblob(30), ${NOW}, 'pending', 0, '', NULL);
    `);
    db.close();
    const store = SqliteStore.open(path);
    const counters = (): unknown => {
      const raw = new Database(path, { readonly: true });
      try {
        return raw.prepare('SELECT agent_id, outbox_bytes, outbox_count FROM agents ORDER BY agent_id').all();
      } finally {
        raw.close();
      }
    };
    const append = async (count: number, maxPending: number): Promise<AppendResult[] | Error | undefined> =>
      (
        await store.applyOutboxBatch({
          appends: [
            {
              agentId: 'bob',
              sender: { kind: 'operator' },
              maxPending,
              maxPendingBytes: 1024,
              messages: Array.from({ length: count }, (_, i) => ({ id: `n${i}`, contentType: 'text/plain', payload: Buffer.from('x'), createdAtMs: NOW, idempotencyKey: null })),
            },
          ],
          acks: [],
        })
      )[0];
    try {
      expect(readVersion(path)).toBe(SCHEMA_VERSION);
      expect(counters()).toEqual([
        { agent_id: 'bob', outbox_bytes: 60, outbox_count: 3 },
        { agent_id: 'idle', outbox_bytes: 0, outbox_count: 0 },
      ]);
      // Three held: two more pass a cap of 4; one more fits it.
      expect(await append(2, 4)).toBeInstanceOf(ResourceExhaustedError);
      expect(await append(1, 4)).toEqual([{ id: 'n0', seq: 5, isDuplicate: false }]);
      await store.applyOutboxBatch({ appends: [], acks: [{ agentId: 'bob', seq: 4 }] });
      // The dead letter at 3 stays held; 2 and 4 are acknowledged; 5 is pending.
      expect(counters()).toEqual([
        { agent_id: 'bob', outbox_bytes: 21, outbox_count: 2 },
        { agent_id: 'idle', outbox_bytes: 0, outbox_count: 0 },
      ]);
    } finally {
      await store.close();
    }
  });

  it('migrates an early store: adds the tables and columns it lacks, with their defaults', async () => {
    writeFixture(path, 'store-unversioned-early.sql');
    expect(tableNames(path)).not.toContain('messages');
    const store = SqliteStore.open(path);
    try {
      expect(tableNames(path)).toContain('messages');
      expect(await store.getAgent('a-old')).toMatchObject({ generation: 7, lastSeq: 0, ackedSeq: 0 });
      expect(await store.getHost('h-old')).toMatchObject({ credentialGeneration: 3, credentialIssuedAtMs: 0 });
      expect(await store.listDeliverable('a-old', 0, 10)).toEqual([]);
    } finally {
      await store.close();
    }
  });

  it('migrates a version-4 store: hosts schedulable, each agent\'s history starting with its state then, a failed agent\'s error kept', async () => {
    writeFixture(path, 'store-v4.sql');
    expect(readVersion(path)).toBe(4);
    expect(tableNames(path)).not.toContain('agent_state_history');
    const store = SqliteStore.open(path);
    try {
      expect(readVersion(path)).toBe(SCHEMA_VERSION);
      expect(await store.getHost('h-old')).toMatchObject({ state: 'active', capacity: 2, isSchedulable: true });
      expect((await store.getHostLoads(['h-old'])).get('h-old')).toMatchObject({ load: 1, isSchedulable: true });
      // Every column of before kept; the new ones with what can be known.
      expect(await store.getAgent('a-running')).toMatchObject({
        state: 'running',
        hostId: 'h-old',
        incarnation: 3,
        generation: 5,
        ackedGeneration: 5,
        requestedHostId: null,
        restarts: 0,
        lastError: '',
        lastErrorAtMs: 0,
        // Migration 9: what made an older agent was never kept; it is taken as dispatched.
        isEnsured: false,
        // Migration 10: today's behaviour, nothing counted, nothing scheduled.
        restartPolicy: 'never',
        failures: 0,
        restartAtMs: 0,
        runningSinceMs: 0,
      });
      // A pending agent's host is the one it asked for.
      expect(await store.getAgent('a-pending')).toMatchObject({ state: 'pending', hostId: 'h-named', requestedHostId: 'h-named' });
      expect(await store.getAgent('a-failed')).toMatchObject({ state: 'failed', lastError: 'exit code 3', lastErrorAtMs: NOW });
      expect(await store.listAgentTransitions('a-running', 50)).toEqual([
        {
          agentId: 'a-running',
          atMs: NOW,
          fromState: null,
          toState: 'running',
          hostId: 'h-old',
          incarnation: 3,
          reason: 'state when the store was upgraded (earlier history was not kept)',
        },
      ]);
      // And history goes on from there.
      await store.updateAgent('a-running', { state: 'stopped', detail: 'stopped by operator', updatedAtMs: NOW + 1 });
      expect((await store.listAgentTransitions('a-running', 50)).map((t) => [t.fromState, t.toState, t.reason])).toEqual([
        [null, 'running', 'state when the store was upgraded (earlier history was not kept)'],
        ['running', 'stopped', 'stopped by operator'],
      ]);
      expect((await store.getHostLoads(['h-old'])).get('h-old')?.load).toBe(0);
    } finally {
      await store.close();
    }
  });

  it('opens a migrated store again without change', async () => {
    writeFixture(path, 'store-unversioned.sql');
    await SqliteStore.open(path).close();
    const store = SqliteStore.open(path);
    try {
      expect(readVersion(path)).toBe(SCHEMA_VERSION);
      expect(await store.getAgent('a-old')).toMatchObject({ lastSeq: 2 });
    } finally {
      await store.close();
    }
  });

  it('refuses a store from a newer binary, naming both versions, and leaves it as it was', () => {
    const db = new Database(path);
    db.exec('CREATE TABLE future (x INTEGER)');
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    expect(() => SqliteStore.open(path)).toThrow(SchemaTooNewError);
    expect(() => SqliteStore.open(path)).toThrow(new RegExp(`schema version ${SCHEMA_VERSION + 1}, newer than this control plane's ${SCHEMA_VERSION}`));
    expect(readVersion(path)).toBe(SCHEMA_VERSION + 1);
    expect(tableNames(path)).toEqual(['future']);
  });

  it('applies migrations in one transaction: one that fails leaves nothing half done', () => {
    // A name the baseline needs for a table, taken by a view: its CREATE INDEX fails part-way through.
    const db = new Database(path);
    db.exec('CREATE VIEW messages AS SELECT 1 AS agent_id');
    db.close();
    expect(() => SqliteStore.open(path)).toThrow();
    expect(readVersion(path)).toBe(0);
    expect(tableNames(path)).toEqual([]);
  });

  it('restore migrates an old backup through the same path, and says from which version', async () => {
    const backupPath = join(dir, 'old-backup.db');
    writeFixture(backupPath, 'store-unversioned.sql');
    const summary = restoreDatabase(path, backupPath, NOW);
    expect(summary).toMatchObject({ previousSchemaVersion: 0, agents: 1, hosts: 1, pendingMessages: 1 });
    expect(readVersion(path)).toBe(SCHEMA_VERSION);
    const store = SqliteStore.open(path);
    try {
      expect(await store.getAgent('a-old')).toMatchObject({ lastSeq: 2 });
    } finally {
      await store.close();
    }
  });

  it('restore refuses a backup from a newer binary and leaves the store in place', async () => {
    await SqliteStore.open(path).close();
    const backupPath = join(dir, 'future-backup.db');
    writeFixture(backupPath, 'store-unversioned.sql');
    const future = new Database(backupPath);
    future.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    future.close();
    expect(() => restoreDatabase(path, backupPath, NOW)).toThrow(BackupError);
    expect(() => restoreDatabase(path, backupPath, NOW)).toThrow(/newer than this control plane's/);
    const store = SqliteStore.open(path);
    try {
      expect(await store.epoch()).not.toBe('epoch-from-before-migrations');
    } finally {
      await store.close();
    }
  });
});
