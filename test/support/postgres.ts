/**
 * PostgreSQL for tests: the server named by TETHER_TEST_POSTGRES_URL (default
 * the local one, trust auth), a fresh schema per test (dropped after), and a
 * lock gate that makes concurrent transactions meet for real.
 *
 * No server reachable: suites skip with a loud message, except in CI
 * (`CI=true`), where that is a failure.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { waitUntil } from './wait.js';

/** The server tests use. */
export const TEST_POSTGRES_URL = process.env.TETHER_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/**
 * Whether the test server answers. Unreachable in CI: throws (the suite must
 * fail, not skip). Unreachable locally: prints why the suite is skipped.
 */
export async function isPostgresAvailable(suite: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: TEST_POSTGRES_URL, connectionTimeoutMillis: 5_000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch (err) {
    const why = `no PostgreSQL at ${TEST_POSTGRES_URL.replace(/:[^:@/]*@/, ':***@')} (${err instanceof Error ? err.message : String(err)})`;
    if (process.env.CI === 'true') throw new Error(`${suite}: ${why}; CI must run the PostgreSQL tests`);
    console.warn(`\n!!!!! SKIPPING ${suite}: ${why}. Start it (pg_ctlcluster --skip-systemctl-redirect <version> main start) or set TETHER_TEST_POSTGRES_URL. !!!!!\n`);
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** A schema of its own for one test: connection strings that select it, and its removal. */
export interface TestSchema {
  name: string;
  /** TETHER_TEST_POSTGRES_URL with `search_path` set to this schema and `application_name` to its name. */
  url: string;
  drop(): Promise<void>;
}

/** A connection string to the test server whose sessions use `schema` (and are named after it). */
export function schemaUrl(schema: string): string {
  const url = new URL(TEST_POSTGRES_URL);
  url.searchParams.set('options', `-c search_path=${schema}`);
  url.searchParams.set('application_name', schema);
  return url.toString();
}

/** Creates an empty schema `t_<random>` on the test server. */
export async function createTestSchema(): Promise<TestSchema> {
  const name = `t_${randomBytes(6).toString('hex')}`;
  await adminQuery(`CREATE SCHEMA ${name}`);
  return {
    name,
    url: schemaUrl(name),
    drop: async () => {
      await adminQuery(`DROP SCHEMA IF EXISTS ${name} CASCADE`);
    },
  };
}

/** Runs one statement on its own connection to the test server. */
export async function adminQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, values: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
  await client.connect();
  try {
    return (await client.query<R>(sql, values)).rows;
  } finally {
    await client.end();
  }
}

/** A transaction on its own connection holding row locks until released: what concurrent writers queue behind. */
export interface LockGate {
  /** Resolves once `count` sessions of the schema (by application name) wait on a lock. */
  waitForWaiters(count: number): Promise<void>;
  /** Ends the gate's transaction (its locks go) and closes its connection. */
  release(): Promise<void>;
}

/**
 * Opens a transaction on `schema` running `lockSql` (e.g. `SELECT 1 FROM hosts
 * WHERE host_id = 'h1' FOR UPDATE`) and holds it: every writer that needs those
 * rows queues behind it, so once they all wait, releasing it makes them meet.
 */
export async function lockGate(schema: TestSchema, lockSql: string, values: unknown[] = []): Promise<LockGate> {
  const gateUrl = new URL(schema.url);
  gateUrl.searchParams.set('application_name', `${schema.name}_gate`);
  const client = new pg.Client({ connectionString: gateUrl.toString() });
  await client.connect();
  await client.query('BEGIN');
  await client.query(lockSql, values);
  let isReleased = false;
  return {
    waitForWaiters: (count) =>
      waitUntil(async () => {
        const rows = await adminQuery<{ n: string }>(
          "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
          [schema.name],
        );
        return Number(rows[0]?.n ?? 0) >= count;
      }, `${count} sessions waiting on the gate's locks`),
    release: async () => {
      if (isReleased) return;
      isReleased = true;
      try {
        await client.query('COMMIT');
      } finally {
        await client.end();
      }
    },
  };
}
