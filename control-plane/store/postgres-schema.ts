/**
 * The PostgreSQL store's schema, as numbered migrations.
 *
 * `tether_schema.version` holds the number of the last migration applied.
 * Opening a store applies every later one in a single transaction under a
 * transaction-scoped advisory lock, so two control planes starting at once on
 * an empty database make one schema (the second waits, then finds it made),
 * and a database migrated by a newer binary is refused rather than misread.
 *
 * Migration 1 is the SQLite store's schema at its version 11,
 * written for PostgreSQL: BIGINT for every millisecond and seq, BOOLEAN flags,
 * BYTEA payloads, and the counters (`hosts.load`, `agents.outbox_bytes` and
 * `outbox_count`) kept by triggers, as in SQLite, so no code path can forget
 * them. Ids are `COLLATE "C"`: listings page in the byte order SQLite's do.
 * Migration 2 is SQLite's 12 and 13 (admin tokens, audit, events). Later
 * changes get their own numbered migration here.
 */
import type { PoolClient } from 'pg';
import { FailedPreconditionError } from '../../common/errors.js';

/** One step of the schema. Applied once, in order; never edited after it ships. */
interface PostgresMigration {
  version: number;
  description: string;
  sql: string;
}

/** The live states (LIVE_AGENT_STATES), spelled out: a change to them needs a migration that recreates the triggers and recounts. */
const LIVE = "('starting', 'running', 'stalled')";

/** What an outbox holds of a message: its payload bytes while pending or dead, nothing once acknowledged or requeued. */
function heldBytes(row: 'NEW' | 'OLD'): string {
  return `(CASE WHEN ${row}.state IN ('pending', 'dead') THEN octet_length(${row}.payload) ELSE 0 END)`;
}

/** 1 while a message is held by its outbox (pending or dead), else 0. */
function heldCount(row: 'NEW' | 'OLD'): string {
  return `(CASE WHEN ${row}.state IN ('pending', 'dead') THEN 1 ELSE 0 END)`;
}

const BASELINE = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE signing_keys (
  kid TEXT COLLATE "C" PRIMARY KEY,
  purpose TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('standby', 'signing', 'verifying-only', 'revoked')),
  private_jwk TEXT,
  public_jwk TEXT NOT NULL,
  created_at_ms BIGINT NOT NULL,
  signing_since_ms BIGINT,
  retired_at_ms BIGINT,
  verify_until_ms BIGINT,
  CHECK ((state IN ('standby', 'signing')) = (private_jwk IS NOT NULL))
);
-- One signer and at most one standby per purpose: two rotations racing (in one control plane or several) cannot both promote.
CREATE UNIQUE INDEX signing_keys_one_signer ON signing_keys (purpose) WHERE state = 'signing';
CREATE UNIQUE INDEX signing_keys_one_standby ON signing_keys (purpose) WHERE state = 'standby';

CREATE TABLE hosts (
  host_id TEXT COLLATE "C" PRIMARY KEY,
  name TEXT NOT NULL,
  state TEXT NOT NULL,
  join_secret_hash TEXT,
  join_expires_at_ms BIGINT NOT NULL,
  join_lease_session_id TEXT,
  credential_generation BIGINT NOT NULL,
  min_valid_generation BIGINT NOT NULL,
  credential_issued_at_ms BIGINT NOT NULL DEFAULT 0,
  credential_expires_at_ms BIGINT NOT NULL,
  capacity INTEGER NOT NULL,
  labels TEXT NOT NULL,
  last_seen_ms BIGINT NOT NULL,
  created_at_ms BIGINT NOT NULL,
  load INTEGER NOT NULL DEFAULT 0,
  is_schedulable BOOLEAN NOT NULL DEFAULT TRUE
);

CREATE TABLE agents (
  agent_id TEXT COLLATE "C" PRIMARY KEY,
  name TEXT NOT NULL,
  state TEXT NOT NULL,
  host_id TEXT COLLATE "C",
  host_labels TEXT NOT NULL,
  spec TEXT NOT NULL,
  incarnation BIGINT NOT NULL,
  generation BIGINT NOT NULL,
  token_id TEXT,
  issued_at_ms BIGINT NOT NULL,
  expires_at_ms BIGINT NOT NULL,
  rotation_due_at_ms BIGINT NOT NULL,
  created_at_ms BIGINT NOT NULL,
  updated_at_ms BIGINT NOT NULL,
  detail TEXT NOT NULL,
  last_seq BIGINT NOT NULL DEFAULT 0,
  acked_seq BIGINT NOT NULL DEFAULT 0,
  previous_expires_at_ms BIGINT NOT NULL DEFAULT 0,
  acked_generation BIGINT NOT NULL DEFAULT 0,
  acked_expires_at_ms BIGINT NOT NULL DEFAULT 0,
  outbox_bytes BIGINT NOT NULL DEFAULT 0,
  outbox_count BIGINT NOT NULL DEFAULT 0,
  requested_host_id TEXT,
  restarts BIGINT NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  last_error_at_ms BIGINT NOT NULL DEFAULT 0,
  is_ensured BOOLEAN NOT NULL DEFAULT FALSE,
  restart_policy TEXT NOT NULL DEFAULT 'never',
  failures BIGINT NOT NULL DEFAULT 0,
  restart_at_ms BIGINT NOT NULL DEFAULT 0,
  running_since_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX agents_by_host ON agents (host_id, state);

CREATE TABLE messages (
  agent_id TEXT COLLATE "C" NOT NULL,
  seq BIGINT NOT NULL,
  id TEXT NOT NULL,
  sender TEXT NOT NULL,
  sender_principal TEXT NOT NULL,
  content_type TEXT NOT NULL,
  payload BYTEA NOT NULL,
  created_at_ms BIGINT NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  last_error TEXT NOT NULL,
  idempotency_key TEXT,
  PRIMARY KEY (agent_id, seq)
);
CREATE INDEX messages_by_state ON messages (agent_id, state, seq);
CREATE UNIQUE INDEX messages_by_idempotency_key ON messages (agent_id, sender_principal, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX messages_by_age ON messages (state, created_at_ms);

CREATE TABLE agent_state_history (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  agent_id TEXT NOT NULL,
  at_ms BIGINT NOT NULL,
  from_state TEXT,
  to_state TEXT NOT NULL,
  host_id TEXT,
  incarnation BIGINT NOT NULL,
  reason TEXT NOT NULL
);
CREATE INDEX agent_state_history_by_agent ON agent_state_history (agent_id, id);

CREATE TABLE host_drains (
  host_id TEXT COLLATE "C" PRIMARY KEY,
  state TEXT NOT NULL,
  started_at_ms BIGINT NOT NULL,
  updated_at_ms BIGINT NOT NULL
);
CREATE TABLE agent_moves (
  agent_id TEXT COLLATE "C" PRIMARY KEY,
  from_host_id TEXT NOT NULL,
  to_host_id TEXT NOT NULL,
  incarnation BIGINT NOT NULL,
  reserved_at_ms BIGINT NOT NULL
);

-- Each host's load: its agents in a live state plus the moves reserved onto it.
CREATE FUNCTION tether_agents_load() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    IF OLD.host_id IS NOT NULL AND OLD.state IN ${LIVE}
       AND (TG_OP = 'DELETE' OR NEW.host_id IS DISTINCT FROM OLD.host_id OR NEW.state NOT IN ${LIVE}) THEN
      UPDATE hosts SET load = load - 1 WHERE host_id = OLD.host_id;
    END IF;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    IF NEW.host_id IS NOT NULL AND NEW.state IN ${LIVE}
       AND (TG_OP = 'INSERT' OR NEW.host_id IS DISTINCT FROM OLD.host_id OR OLD.state NOT IN ${LIVE}) THEN
      UPDATE hosts SET load = load + 1 WHERE host_id = NEW.host_id;
    END IF;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER agents_load AFTER INSERT OR DELETE OR UPDATE OF host_id, state ON agents
  FOR EACH ROW EXECUTE FUNCTION tether_agents_load();

CREATE FUNCTION tether_moves_load() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE hosts SET load = load + 1 WHERE host_id = NEW.to_host_id;
  ELSE
    UPDATE hosts SET load = load - 1 WHERE host_id = OLD.to_host_id;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER agent_moves_load AFTER INSERT OR DELETE ON agent_moves
  FOR EACH ROW EXECUTE FUNCTION tether_moves_load();

-- Each outbox's bytes and messages held (pending and dead): what its caps count, read from one row per append.
CREATE FUNCTION tether_messages_held() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF ${heldCount('NEW')} = 1 THEN
      UPDATE agents SET outbox_bytes = outbox_bytes + ${heldBytes('NEW')}, outbox_count = outbox_count + 1 WHERE agent_id = NEW.agent_id;
    END IF;
  ELSIF TG_OP = 'DELETE' THEN
    IF ${heldCount('OLD')} = 1 THEN
      UPDATE agents SET outbox_bytes = outbox_bytes - ${heldBytes('OLD')}, outbox_count = outbox_count - 1 WHERE agent_id = OLD.agent_id;
    END IF;
  ELSIF NEW.agent_id IS DISTINCT FROM OLD.agent_id THEN
    UPDATE agents SET outbox_bytes = outbox_bytes - ${heldBytes('OLD')}, outbox_count = outbox_count - ${heldCount('OLD')} WHERE agent_id = OLD.agent_id;
    UPDATE agents SET outbox_bytes = outbox_bytes + ${heldBytes('NEW')}, outbox_count = outbox_count + ${heldCount('NEW')} WHERE agent_id = NEW.agent_id;
  ELSIF ${heldBytes('NEW')} <> ${heldBytes('OLD')} OR ${heldCount('NEW')} <> ${heldCount('OLD')} THEN
    UPDATE agents SET
      outbox_bytes = outbox_bytes - ${heldBytes('OLD')} + ${heldBytes('NEW')},
      outbox_count = outbox_count - ${heldCount('OLD')} + ${heldCount('NEW')}
    WHERE agent_id = NEW.agent_id;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER messages_held AFTER INSERT OR DELETE OR UPDATE OF agent_id, state, payload ON messages
  FOR EACH ROW EXECUTE FUNCTION tether_messages_held();
`;

/**
 * SQLite's migrations 12 and 13: admin tokens, the audit log, the lifecycle events.
 *
 * Audit ids come from an identity (a rolled-back append leaves a gap: harmless,
 * nothing waits on an audit id). Event ids do not: they are taken from the one
 * row of `event_ids` in the appending transaction, as outbox seqs are, so they
 * exist only once committed, gapless and in commit order across every control
 * plane on the database, and `event_ids.last_id` is the highest id ever given
 * however much was pruned (what SQLite reads from sqlite_sequence). A watcher
 * that read events up to it has seen every event with a lower id.
 */
const ADMIN_AUDIT_EVENTS = `
CREATE TABLE admin_tokens (
  token_id TEXT COLLATE "C" PRIMARY KEY,
  name TEXT NOT NULL,
  role TEXT NOT NULL,
  secret_hash TEXT NOT NULL,
  created_at_ms BIGINT NOT NULL,
  created_by TEXT NOT NULL,
  retired_at_ms BIGINT
);

CREATE TABLE audit_records (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at_ms BIGINT NOT NULL,
  token_id TEXT NOT NULL,
  method TEXT NOT NULL,
  targets TEXT NOT NULL,
  code INTEGER NOT NULL
);
CREATE INDEX audit_records_by_time ON audit_records (at_ms);
CREATE INDEX audit_records_by_token ON audit_records (token_id, id);

CREATE TABLE events (
  id BIGINT PRIMARY KEY,
  at_ms BIGINT NOT NULL,
  kind TEXT NOT NULL,
  agent_id TEXT NOT NULL,
  host_id TEXT NOT NULL,
  incarnation BIGINT NOT NULL,
  generation BIGINT NOT NULL,
  key_id TEXT NOT NULL,
  reason TEXT NOT NULL,
  detail TEXT NOT NULL
);
-- One row: the highest event id ever given.
CREATE TABLE event_ids (
  is_the_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (is_the_row),
  last_id BIGINT NOT NULL
);
INSERT INTO event_ids (last_id) VALUES (0);
`;

/** Every migration, in order. Append only; the last one's number is {@link POSTGRES_SCHEMA_VERSION}. */
const MIGRATIONS: readonly PostgresMigration[] = [
  {
    version: 1,
    description: 'the schema of the SQLite store at its version 11: meta, signing keys, hosts, agents, messages, history, drains, moves; counters kept by triggers',
    sql: BASELINE,
  },
  {
    version: 2,
    description: "the SQLite store's migrations 12 and 13: admin tokens (secrets as SHA-256 only), the audit log (identity ids), events (ids from event_ids: gapless, in commit order, never reused)",
    sql: ADMIN_AUDIT_EVENTS,
  },
];

/** The schema version this binary writes: the number of its last migration. */
export const POSTGRES_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0;

/** The database's Tether schema is newer than this binary knows; opening it would misread it. */
export class PostgresSchemaTooNewError extends FailedPreconditionError {
  readonly storeVersion: number;

  constructor(storeVersion: number, options?: ErrorOptions) {
    super(
      `the PostgreSQL store has schema version ${storeVersion}, newer than this control plane's ${POSTGRES_SCHEMA_VERSION}: ` +
        'it was migrated by a newer Tether; run that version',
      options,
    );
    this.storeVersion = storeVersion;
  }
}

/**
 * Advisory lock key (first half) of Tether's migrations; the second half is the
 * schema's name hashed, so stores in two schemas of one database migrate apart.
 */
const MIGRATION_LOCK_KEY = 0x7e7e;

/** Options of {@link migratePostgres}. */
export interface MigrateOptions {
  /** @internal For tests: stop at this version (as an older binary would leave it). */
  toVersion?: number;
  /** @internal For tests: skip the advisory lock, to show what it prevents. */
  isUnlocked?: boolean;
}

/**
 * Brings the schema `client`'s search path names to {@link POSTGRES_SCHEMA_VERSION}
 * in one transaction, under an advisory lock, and records a new epoch if the
 * store has none; throws {@link PostgresSchemaTooNewError} without touching it.
 * Returns the version it found. `client` must not be in a transaction.
 */
export async function migratePostgres(client: PoolClient, epoch: string, options: MigrateOptions = {}): Promise<number> {
  const toVersion = options.toVersion ?? POSTGRES_SCHEMA_VERSION;
  await client.query('BEGIN');
  try {
    if (options.isUnlocked !== true) {
      // Held to the end of this transaction: a second control plane waits here, then finds the schema made.
      await client.query('SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))', [MIGRATION_LOCK_KEY]);
    }
    await client.query('CREATE TABLE IF NOT EXISTS tether_schema (version INTEGER NOT NULL)');
    const rows = (await client.query<{ version: number }>('SELECT version FROM tether_schema')).rows;
    const found = rows[0]?.version ?? 0;
    if (found > POSTGRES_SCHEMA_VERSION) throw new PostgresSchemaTooNewError(found);
    for (const migration of MIGRATIONS) {
      if (migration.version <= found || migration.version > toVersion) continue;
      await client.query(migration.sql);
    }
    if (rows.length === 0) await client.query('INSERT INTO tether_schema (version) VALUES ($1)', [Math.max(found, toVersion)]);
    else if (toVersion > found) await client.query('UPDATE tether_schema SET version = $1', [toVersion]);
    if (toVersion >= 1) await client.query("INSERT INTO meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING", [epoch]);
    await client.query('COMMIT');
    return found;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}
