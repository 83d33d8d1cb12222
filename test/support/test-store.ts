/**
 * Which store engine the end-to-end tests run on: SQLite in the control
 * plane's data directory (the default), or, with `TETHER_TEST_STORE=postgres`,
 * a fresh PostgreSQL schema of its own on the test server (TETHER_TEST_POSTGRES_URL)
 * for every harness and every control-plane process a test starts, dropped at
 * its teardown. Asked for PostgreSQL and none is reachable: a failure, never a
 * silent fall back to SQLite.
 */
import { PostgresStore } from '../../control-plane/store/postgres-store.js';
import { databasePath, SqliteStore } from '../../control-plane/store/sqlite-store.js';
import type { AdminTokenStore } from '../../control-plane/store/admin-token-store.js';
import type { AuditStore } from '../../control-plane/store/audit-store.js';
import type { EventStore } from '../../control-plane/store/event-store.js';
import type { Store } from '../../control-plane/store/store.js';

/** What both engines implement: the Store and the admin tokens, audit log and events beside it. */
export type TestStore = Store & AdminTokenStore & AuditStore & EventStore;
import { createTestSchema, TEST_POSTGRES_URL, type TestSchema } from './postgres.js';

/** The engines a test run can pick. */
export type TestStoreEngine = 'sqlite' | 'postgres';

/** The engine TETHER_TEST_STORE names (`sqlite` when unset); anything else is refused. */
export function testStoreEngine(): TestStoreEngine {
  const given = process.env.TETHER_TEST_STORE ?? '';
  if (given === '' || given === 'sqlite') return 'sqlite';
  if (given === 'postgres') return 'postgres';
  throw new Error(`TETHER_TEST_STORE must be sqlite or postgres, got ${given}`);
}

/** Whether this run's control planes use PostgreSQL (for a test that is about SQLite alone, to skip with its reason). */
export function isPostgresTestRun(): boolean {
  return testStoreEngine() === 'postgres';
}

/**
 * Where one test's control plane keeps its state, across restarts: opened
 * again by each control plane started on it, removed by `drop` (SQLite's file
 * goes with the data directory, which the test owns).
 */
export interface TestStoreLocation {
  readonly engine: TestStoreEngine;
  /** Environment for a `control-plane serve` child: TETHER_STORE for PostgreSQL, nothing for SQLite. */
  readonly env: Readonly<Record<string, string>>;
  /** Opens the store (migrated) for an in-process control plane. */
  open(): Promise<TestStore>;
  /** Drops the PostgreSQL schema; nothing for SQLite. Idempotent. */
  drop(): Promise<void>;
}

/** A new location for one test, on `engine` (default this run's): for SQLite, the database in `dataDir`. */
export async function createTestStoreLocation(dataDir: string, engine: TestStoreEngine = testStoreEngine()): Promise<TestStoreLocation> {
  if (engine === 'sqlite') {
    return { engine: 'sqlite', env: {}, open: () => Promise.resolve(SqliteStore.open(databasePath(dataDir))), drop: () => Promise.resolve() };
  }
  let schema: TestSchema;
  try {
    schema = await createTestSchema();
  } catch (err) {
    throw new Error(`a PostgreSQL store was asked for, but no schema could be made on ${TEST_POSTGRES_URL.replace(/:[^:@/]*@/, ':***@')}`, { cause: err });
  }
  let isDropped = false;
  return {
    engine: 'postgres',
    env: { TETHER_STORE: schema.url },
    open: () => PostgresStore.open(schema.url),
    drop: async () => {
      if (isDropped) return;
      isDropped = true;
      await schema.drop();
    },
  };
}
