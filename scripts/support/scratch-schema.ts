/**
 * A throwaway PostgreSQL schema for one run of a script (the chaos soak, a
 * benchmark): made empty on the server a `postgres://` URL names, and a URL
 * whose sessions use it (`search_path`), so a run never sees another's state.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { redactConnectionString } from '../../control-plane/store/postgres-url.js';

/** One scratch schema: its name, the URL that selects it, and its removal. */
export interface ScratchSchema {
  readonly name: string;
  /** The server's URL with `options=-c search_path=<name>`: what `--store` / TETHER_STORE is given. */
  readonly url: string;
  /** The URL without its password, for output. */
  readonly shownUrl: string;
  /** Drops the schema and everything in it. Idempotent. */
  drop(): Promise<void>;
}

/**
 * Creates an empty schema `<prefix>_<random hex>` on the server of `serverUrl`.
 * Unreachable: an error naming the URL without its password.
 */
export async function createScratchSchema(serverUrl: string, prefix: string): Promise<ScratchSchema> {
  if (!/^[a-z][a-z0-9_]*$/.test(prefix)) throw new Error(`a schema prefix must be lowercase letters, digits and _: ${prefix}`);
  const name = `${prefix}_${randomBytes(5).toString('hex')}`;
  const url = new URL(serverUrl);
  url.searchParams.set('options', `-c search_path=${name}`);
  await run(serverUrl, `CREATE SCHEMA ${name}`);
  let isDropped = false;
  return {
    name,
    url: url.toString(),
    shownUrl: redactConnectionString(url.toString()),
    drop: async () => {
      if (isDropped) return;
      isDropped = true;
      await run(serverUrl, `DROP SCHEMA IF EXISTS ${name} CASCADE`);
    },
  };
}

async function run(serverUrl: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl, connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
    await client.query(sql);
  } catch (err) {
    throw new Error(`PostgreSQL at ${redactConnectionString(serverUrl)}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  } finally {
    await client.end().catch(() => undefined);
  }
}
