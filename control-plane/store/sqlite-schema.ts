/**
 * The embedded store's schema, as numbered migrations.
 *
 * `PRAGMA user_version` holds the number of the last migration applied. Opening
 * a store applies every later one in a single transaction (all or none), so a
 * store or a restored backup made by an older binary is brought up to date, and
 * a store made by a newer binary is refused rather than misread.
 */
import type Database from 'better-sqlite3';
import { FailedPreconditionError } from '../../common/errors.js';

/** One step of the schema. Applied once, in order; never edited after it ships. */
interface Migration {
  version: number;
  description: string;
  apply: (db: Database.Database) => void;
}

/**
 * The schema as it stood before migrations were numbered. Stores made then have
 * `user_version` 0 and these tables already, so every statement tolerates them;
 * columns added to those tables over time without a migration are added here
 * if missing.
 */
const BASELINE = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signing_keys (
  kid TEXT PRIMARY KEY,
  private_jwk TEXT NOT NULL,
  public_jwk TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  retired_at_ms INTEGER,
  verify_until_ms INTEGER
);
CREATE TABLE IF NOT EXISTS hosts (
  host_id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  state TEXT NOT NULL,
  join_secret_hash TEXT,
  join_expires_at_ms INTEGER NOT NULL,
  join_lease_session_id TEXT,
  credential_generation INTEGER NOT NULL,
  min_valid_generation INTEGER NOT NULL,
  credential_issued_at_ms INTEGER NOT NULL DEFAULT 0,
  credential_expires_at_ms INTEGER NOT NULL,
  capacity INTEGER NOT NULL,
  labels TEXT NOT NULL,
  last_seen_ms INTEGER NOT NULL,
  created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
  agent_id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  state TEXT NOT NULL,
  host_id TEXT,
  host_labels TEXT NOT NULL,
  spec TEXT NOT NULL,
  incarnation INTEGER NOT NULL,
  generation INTEGER NOT NULL,
  token_id TEXT,
  issued_at_ms INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL,
  rotation_due_at_ms INTEGER NOT NULL,
  created_at_ms INTEGER NOT NULL,
  updated_at_ms INTEGER NOT NULL,
  detail TEXT NOT NULL,
  last_seq INTEGER NOT NULL DEFAULT 0,
  acked_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS agents_by_host ON agents (host_id, state);
CREATE TABLE IF NOT EXISTS messages (
  agent_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  id TEXT NOT NULL,
  sender TEXT NOT NULL,
  content_type TEXT NOT NULL,
  payload BLOB NOT NULL,
  created_at_ms INTEGER NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  last_error TEXT NOT NULL,
  idempotency_key TEXT,
  PRIMARY KEY (agent_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_state ON messages (agent_id, state, seq);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_idempotency_key ON messages (agent_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (state, created_at_ms);
`;

/** Columns that unnumbered versions of the schema added later, each with the default older rows get. */
const BASELINE_LATE_COLUMNS: readonly { table: string; column: string; definition: string }[] = [
  { table: 'hosts', column: 'credential_issued_at_ms', definition: 'INTEGER NOT NULL DEFAULT 0' },
  { table: 'agents', column: 'last_seq', definition: 'INTEGER NOT NULL DEFAULT 0' },
  { table: 'agents', column: 'acked_seq', definition: 'INTEGER NOT NULL DEFAULT 0' },
];

/**
 * Each host's load (its agents in a live state: starting, running, stalled),
 * kept by triggers on every write to `agents`, so placement reads one row per
 * candidate host instead of counting agents, and no code path that ends, moves
 * or deletes an agent can forget to give its place back. `placeAgent` checks it
 * against the capacity in the same transaction that places the agent.
 *
 * The live states are spelled out here: a change to `LIVE_AGENT_STATES` needs a
 * migration that recreates these triggers and recounts.
 */
const HOST_LOAD = `
ALTER TABLE hosts ADD COLUMN load INTEGER NOT NULL DEFAULT 0;
UPDATE hosts SET load = (
  SELECT COUNT(*) FROM agents WHERE agents.host_id = hosts.host_id AND agents.state IN ('starting', 'running', 'stalled')
);
CREATE TRIGGER agents_load_insert AFTER INSERT ON agents
  WHEN NEW.host_id IS NOT NULL AND NEW.state IN ('starting', 'running', 'stalled')
BEGIN
  UPDATE hosts SET load = load + 1 WHERE host_id = NEW.host_id;
END;
CREATE TRIGGER agents_load_delete AFTER DELETE ON agents
  WHEN OLD.host_id IS NOT NULL AND OLD.state IN ('starting', 'running', 'stalled')
BEGIN
  UPDATE hosts SET load = load - 1 WHERE host_id = OLD.host_id;
END;
CREATE TRIGGER agents_load_leave AFTER UPDATE OF host_id, state ON agents
  WHEN OLD.host_id IS NOT NULL AND OLD.state IN ('starting', 'running', 'stalled')
    AND (NEW.host_id IS NOT OLD.host_id OR NEW.state NOT IN ('starting', 'running', 'stalled'))
BEGIN
  UPDATE hosts SET load = load - 1 WHERE host_id = OLD.host_id;
END;
CREATE TRIGGER agents_load_enter AFTER UPDATE OF host_id, state ON agents
  WHEN NEW.host_id IS NOT NULL AND NEW.state IN ('starting', 'running', 'stalled')
    AND (NEW.host_id IS NOT OLD.host_id OR OLD.state NOT IN ('starting', 'running', 'stalled'))
BEGIN
  UPDATE hosts SET load = load + 1 WHERE host_id = NEW.host_id;
END;
`;

/**
 * Signing keys get a lifecycle the store enforces: one `signing` and at most one
 * `standby` key per purpose (partial unique indexes, so two rotations racing, in
 * one process or in two, cannot both promote), and no private half on a key that
 * no longer signs (a CHECK). The table is rebuilt because SQLite cannot relax
 * `private_jwk NOT NULL` in place. Of several unretired keys (the old race),
 * the newest signs and the rest become verifying-only with no verify-until yet:
 * the key ring fixes that at load from the longest token lifetime. Private halves
 * of keys already retired are dropped here.
 */
const SIGNING_KEY_STATES = `
CREATE TABLE signing_keys_v2 (
  kid TEXT PRIMARY KEY,
  purpose TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('standby', 'signing', 'verifying-only', 'revoked')),
  private_jwk TEXT,
  public_jwk TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  signing_since_ms INTEGER,
  retired_at_ms INTEGER,
  verify_until_ms INTEGER,
  CHECK ((state IN ('standby', 'signing')) = (private_jwk IS NOT NULL))
);
INSERT INTO signing_keys_v2 (kid, purpose, state, private_jwk, public_jwk, created_at_ms, signing_since_ms, retired_at_ms, verify_until_ms)
  SELECT kid, 'tokens',
    CASE WHEN is_signer THEN 'signing' ELSE 'verifying-only' END,
    CASE WHEN is_signer THEN private_jwk END,
    public_jwk, created_at_ms,
    created_at_ms,
    CASE WHEN is_signer THEN NULL ELSE COALESCE(retired_at_ms, created_at_ms) END,
    CASE WHEN is_signer THEN NULL ELSE verify_until_ms END
  FROM (
    SELECT k.*, k.kid = (SELECT kid FROM signing_keys WHERE retired_at_ms IS NULL ORDER BY created_at_ms DESC, kid DESC LIMIT 1) AS is_signer
    FROM signing_keys k
  );
DROP TABLE signing_keys;
ALTER TABLE signing_keys_v2 RENAME TO signing_keys;
CREATE UNIQUE INDEX signing_keys_one_signer ON signing_keys (purpose) WHERE state = 'signing';
CREATE UNIQUE INDEX signing_keys_one_standby ON signing_keys (purpose) WHERE state = 'standby';
`;

/**
 * What each agent's host has acknowledged holding, beside what was last issued: a rotation sent
 * into a dead stream is not counted as held. The previous generation's expiry is kept so an Ack
 * that arrives after the next rotation was issued still records the right expiry.
 */
const AGENT_ACKED_CREDENTIAL = `
ALTER TABLE agents ADD COLUMN previous_expires_at_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN acked_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN acked_expires_at_ms INTEGER NOT NULL DEFAULT 0;
`;

/**
 * Idempotency keys scoped to (recipient, sender), not to the recipient alone: a
 * key one sender chose no longer answers another's send with the first one's id
 * and seq (and drops the second message). `sender_principal` is `agent:<id>` for
 * an agent and `operator` for AdminService sends; `sender` stays what the
 * recipient is shown. Existing rows get the principal their `sender` names:
 * `operator` is the operator (the only name AdminService ever stored), anything
 * else the agent of that id. An agent whose id is `operator` had its old keys
 * share the operator's scope; they keep it until pruned (acknowledged messages
 * are kept a day), which can make one of its retries within that day a duplicate
 * of an operator's send, as it already was before this migration.
 */
const IDEMPOTENCY_BY_SENDER = `
ALTER TABLE messages ADD COLUMN sender_principal TEXT NOT NULL DEFAULT '';
UPDATE messages SET sender_principal = CASE WHEN sender = 'operator' THEN 'operator' ELSE 'agent:' || sender END;
DROP INDEX messages_by_idempotency_key;
CREATE UNIQUE INDEX messages_by_idempotency_key ON messages (agent_id, sender_principal, idempotency_key) WHERE idempotency_key IS NOT NULL;
`;

/** What an outbox holds of a message: its payload bytes while pending or dead, nothing once acknowledged or requeued. */
function heldBytes(row: 'NEW' | 'OLD'): string {
  return `(CASE WHEN ${row}.state IN ('pending', 'dead') THEN octet_length(${row}.payload) ELSE 0 END)`;
}

/**
 * Each agent's outbox size in bytes (payloads of its pending and dead messages,
 * what the count cap counts too), so a send is checked against a byte cap by
 * reading one row rather than summing the outbox. Kept by triggers on every
 * write to `messages` (append, ack, dead-letter, requeue, purge, prune), like
 * `hosts.load`: no path that changes an outbox can forget it. Counted afresh
 * here for existing rows.
 */
const OUTBOX_BYTES = `
ALTER TABLE agents ADD COLUMN outbox_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE agents SET outbox_bytes = (
  SELECT COALESCE(SUM(octet_length(payload)), 0) FROM messages WHERE messages.agent_id = agents.agent_id AND messages.state IN ('pending', 'dead')
);
CREATE TRIGGER messages_bytes_insert AFTER INSERT ON messages
  WHEN ${heldBytes('NEW')} > 0
BEGIN
  UPDATE agents SET outbox_bytes = outbox_bytes + ${heldBytes('NEW')} WHERE agent_id = NEW.agent_id;
END;
CREATE TRIGGER messages_bytes_delete AFTER DELETE ON messages
  WHEN ${heldBytes('OLD')} > 0
BEGIN
  UPDATE agents SET outbox_bytes = outbox_bytes - ${heldBytes('OLD')} WHERE agent_id = OLD.agent_id;
END;
CREATE TRIGGER messages_bytes_update AFTER UPDATE OF agent_id, state, payload ON messages
  WHEN NEW.agent_id IS NOT OLD.agent_id OR ${heldBytes('NEW')} != ${heldBytes('OLD')}
BEGIN
  UPDATE agents SET outbox_bytes = outbox_bytes - ${heldBytes('OLD')} WHERE agent_id = OLD.agent_id;
  UPDATE agents SET outbox_bytes = outbox_bytes + ${heldBytes('NEW')} WHERE agent_id = NEW.agent_id;
END;
`;

/**
 * Agents remember whether `ensure` made them (or last restarted them): such an agent is started
 * on another host when its host is lost (after its old incarnation is fenced and its last tokens
 * have expired); one made by `dispatch` waits for its host to come back. Rows written before this
 * are taken as dispatched: what made them was never kept.
 */
const AGENT_ENSURED = `
ALTER TABLE agents ADD COLUMN is_ensured INTEGER NOT NULL DEFAULT 0;
`;

/**
 * Agents get a lifecycle record (issue 15): each change of state, host or incarnation is a row of
 * `agent_state_history` with its reason, written by the store in the same transaction as the change
 * and bounded per agent (MAX_TRANSITIONS_PER_AGENT, oldest dropped). Hosts get a schedulable flag
 * (cordon; drain sets it), honoured by placement and by `placeAgent` itself. Agents keep the host their
 * dispatch named (`requested_host_id`: `host_id` is where they run, which placement by labels
 * chooses), so `ensure` can tell a changed spec apart; for rows written before this, it is known only
 * for pending agents (whose `host_id` was the one asked for). Each existing agent's history starts
 * with one row recording its state at the upgrade: what came before was never kept.
 */
const AGENT_LIFECYCLE = `
ALTER TABLE hosts ADD COLUMN is_schedulable INTEGER NOT NULL DEFAULT 1;
ALTER TABLE agents ADD COLUMN requested_host_id TEXT;
UPDATE agents SET requested_host_id = host_id WHERE state = 'pending';
ALTER TABLE agents ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN last_error_at_ms INTEGER NOT NULL DEFAULT 0;
UPDATE agents SET last_error = detail, last_error_at_ms = updated_at_ms WHERE state = 'failed';
CREATE TABLE agent_state_history (
  id INTEGER PRIMARY KEY,
  agent_id TEXT NOT NULL,
  at_ms INTEGER NOT NULL,
  from_state TEXT,
  to_state TEXT NOT NULL,
  host_id TEXT,
  incarnation INTEGER NOT NULL,
  reason TEXT NOT NULL
);
CREATE INDEX agent_state_history_by_agent ON agent_state_history (agent_id, id);
INSERT INTO agent_state_history (agent_id, at_ms, from_state, to_state, host_id, incarnation, reason)
  SELECT agent_id, updated_at_ms, NULL, state, host_id, incarnation, 'state when the store was upgraded (earlier history was not kept)'
  FROM agents ORDER BY agent_id;
`;

/** Whether a message row is held by its outbox (pending or dead): 1 or 0. */
function heldCount(row: 'NEW' | 'OLD'): string {
  return `(${row}.state IN ('pending', 'dead'))`;
}

/**
 * Each agent's outbox size in messages (pending and dead, what the count cap
 * counts), beside its bytes, so an append checks the cap by reading its agent's
 * row rather than counting the outbox (a COUNT per append). The triggers of
 * migration 6 are replaced by ones that keep both in one UPDATE of the agent's
 * row; a message that stays with its agent (every write but a hypothetical
 * move) updates that row once, not twice, so an ack costs one row write less
 * per message. Counted afresh here for existing rows.
 */
const OUTBOX_COUNT = `
ALTER TABLE agents ADD COLUMN outbox_count INTEGER NOT NULL DEFAULT 0;
UPDATE agents SET outbox_count = (
  SELECT COUNT(*) FROM messages WHERE messages.agent_id = agents.agent_id AND messages.state IN ('pending', 'dead')
);
DROP TRIGGER messages_bytes_insert;
DROP TRIGGER messages_bytes_delete;
DROP TRIGGER messages_bytes_update;
CREATE TRIGGER messages_held_insert AFTER INSERT ON messages
  WHEN ${heldCount('NEW')}
BEGIN
  UPDATE agents SET outbox_bytes = outbox_bytes + ${heldBytes('NEW')}, outbox_count = outbox_count + 1 WHERE agent_id = NEW.agent_id;
END;
CREATE TRIGGER messages_held_delete AFTER DELETE ON messages
  WHEN ${heldCount('OLD')}
BEGIN
  UPDATE agents SET outbox_bytes = outbox_bytes - ${heldBytes('OLD')}, outbox_count = outbox_count - 1 WHERE agent_id = OLD.agent_id;
END;
CREATE TRIGGER messages_held_update AFTER UPDATE OF agent_id, state, payload ON messages
  WHEN NEW.agent_id IS OLD.agent_id AND (${heldBytes('NEW')} != ${heldBytes('OLD')} OR ${heldCount('NEW')} != ${heldCount('OLD')})
BEGIN
  UPDATE agents SET
    outbox_bytes = outbox_bytes - ${heldBytes('OLD')} + ${heldBytes('NEW')},
    outbox_count = outbox_count - ${heldCount('OLD')} + ${heldCount('NEW')}
  WHERE agent_id = NEW.agent_id;
END;
CREATE TRIGGER messages_held_move AFTER UPDATE OF agent_id ON messages
  WHEN NEW.agent_id IS NOT OLD.agent_id
BEGIN
  UPDATE agents SET outbox_bytes = outbox_bytes - ${heldBytes('OLD')}, outbox_count = outbox_count - ${heldCount('OLD')} WHERE agent_id = OLD.agent_id;
  UPDATE agents SET outbox_bytes = outbox_bytes + ${heldBytes('NEW')}, outbox_count = outbox_count + ${heldCount('NEW')} WHERE agent_id = NEW.agent_id;
END;
`;

/**
 * Restart policy per agent (issue 15): the policy, its ends in a row without a healthy period
 * (the restart budget), the time before which a pending agent waiting to restart is not placed,
 * and when it last became running (a healthy period forgives the ends). Existing agents: `never`.
 */
const RESTART_POLICY = `
ALTER TABLE agents ADD COLUMN restart_policy TEXT NOT NULL DEFAULT 'never';
ALTER TABLE agents ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN restart_at_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN running_since_ms INTEGER NOT NULL DEFAULT 0;
`;

/**
 * Host drain (issue 15): a drain is a row of `host_drains` (draining, then drained), kept
 * until an uncordon, so a restarted control plane resumes it; the host stays unschedulable
 * meanwhile. A move of one agent off a draining host first reserves room on its target: a row of
 * `agent_moves`, counted in the target's load by triggers (so no other placement takes that
 * room), which `placeAgent` turns into the agent's own place on the target in one transaction.
 */
const HOST_DRAIN = `
CREATE TABLE host_drains (
  host_id TEXT PRIMARY KEY,
  state TEXT NOT NULL,
  started_at_ms INTEGER NOT NULL,
  updated_at_ms INTEGER NOT NULL
);
CREATE TABLE agent_moves (
  agent_id TEXT PRIMARY KEY,
  from_host_id TEXT NOT NULL,
  to_host_id TEXT NOT NULL,
  incarnation INTEGER NOT NULL,
  reserved_at_ms INTEGER NOT NULL
);
CREATE TRIGGER agent_moves_reserve AFTER INSERT ON agent_moves
BEGIN
  UPDATE hosts SET load = load + 1 WHERE host_id = NEW.to_host_id;
END;
CREATE TRIGGER agent_moves_release AFTER DELETE ON agent_moves
BEGIN
  UPDATE hosts SET load = load - 1 WHERE host_id = OLD.to_host_id;
END;
`;

const ADMIN_TOKENS_AND_AUDIT = `
CREATE TABLE admin_tokens (
  token_id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  role TEXT NOT NULL,
  secret_hash TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  created_by TEXT NOT NULL,
  retired_at_ms INTEGER
);
CREATE TABLE audit_records (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at_ms INTEGER NOT NULL,
  token_id TEXT NOT NULL,
  method TEXT NOT NULL,
  targets TEXT NOT NULL,
  code INTEGER NOT NULL
);
CREATE INDEX audit_records_by_time ON audit_records (at_ms);
CREATE INDEX audit_records_by_token ON audit_records (token_id, id);
`;

const EVENTS = `
CREATE TABLE events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  agent_id TEXT NOT NULL,
  host_id TEXT NOT NULL,
  incarnation INTEGER NOT NULL,
  generation INTEGER NOT NULL,
  key_id TEXT NOT NULL,
  reason TEXT NOT NULL,
  detail TEXT NOT NULL
);
`;

/** Every migration, in order. Append only; the last one's number is {@link SCHEMA_VERSION}. */
const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'baseline: meta, signing keys, hosts, agents, messages',
    apply: (db) => {
      db.exec(BASELINE);
      for (const { table, column, definition } of BASELINE_LATE_COLUMNS) {
        const columns = db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[];
        if (!columns.some((c) => c.name === column)) db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${definition}`);
      }
    },
  },
  {
    version: 2,
    description: 'hosts.load: live agents per host, kept by triggers (atomic placement against capacity)',
    apply: (db) => {
      db.exec(HOST_LOAD);
    },
  },
  {
    version: 3,
    description: 'signing keys: a state per key (standby, signing, verifying-only, revoked), one signer and one standby per purpose',
    apply: (db) => db.exec(SIGNING_KEY_STATES),
  },
  {
    version: 4,
    description: "agents: the credential generation (and its expiry) the agent's host acknowledged, and the previous one's expiry",
    apply: (db) => db.exec(AGENT_ACKED_CREDENTIAL),
  },
  {
    version: 5,
    description: 'messages: idempotency keys scoped to (recipient, sender principal)',
    apply: (db) => db.exec(IDEMPOTENCY_BY_SENDER),
  },
  {
    version: 6,
    description: 'agents.outbox_bytes: payload bytes of pending and dead messages, kept by triggers (a byte cap per outbox)',
    apply: (db) => db.exec(OUTBOX_BYTES),
  },
  {
    version: 7,
    description: 'agent lifecycle: bounded state history with reasons, restarts, last error, the requested host; hosts.is_schedulable',
    apply: (db) => db.exec(AGENT_LIFECYCLE),
  },
  {
    version: 8,
    description: 'agents.outbox_count: pending and dead messages per outbox, kept with outbox_bytes by the same triggers (no COUNT per append)',
    apply: (db) => db.exec(OUTBOX_COUNT),
  },
  {
    version: 9,
    description: 'agents.is_ensured: made by ensure, so moved to another host when its host is lost',
    apply: (db) => db.exec(AGENT_ENSURED),
  },
  {
    version: 10,
    description: 'restart policy: per-agent policy, failures in a row, the next restart time, when it last became running',
    apply: (db) => db.exec(RESTART_POLICY),
  },
  {
    version: 11,
    description: 'host drain: persisted drain state per host; move reservations counted in their target host\'s load',
    apply: (db) => db.exec(HOST_DRAIN),
  },
  {
    version: 12,
    description: 'admin tokens with ids and roles (secrets as SHA-256 only); the audit log of AdminService calls (AUTOINCREMENT: ids never reused after pruning)',
    apply: (db) => db.exec(ADMIN_TOKENS_AND_AUDIT),
  },
  {
    version: 13,
    description: 'events: lifecycle events for WatchEvents, ids never reused (AUTOINCREMENT), pruned oldest first',
    apply: (db) => db.exec(EVENTS),
  },
];

/** The schema version this binary writes: the number of its last migration. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0;

/** The store's schema is newer than this binary knows; opening it would misread it. */
export class SchemaTooNewError extends FailedPreconditionError {
  readonly storeVersion: number;

  constructor(storeVersion: number, options?: ErrorOptions) {
    super(
      `the store has schema version ${storeVersion}, newer than this control plane's ${SCHEMA_VERSION}: ` +
        'it was written by a newer Tether; run that version (or restore a backup made by this one)',
      options,
    );
    this.storeVersion = storeVersion;
  }
}

/** The schema version of an open database (0: made before migrations were numbered, or empty). */
export function schemaVersion(db: Database.Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Brings `db` to {@link SCHEMA_VERSION} in one transaction, or throws
 * {@link SchemaTooNewError} without touching it. Returns the version it found.
 * `toVersion` (@internal, for tests) stops earlier, to make a store as an older
 * binary left it.
 */
export function migrate(db: Database.Database, toVersion: number = SCHEMA_VERSION): number {
  const found = schemaVersion(db);
  if (found > SCHEMA_VERSION) throw new SchemaTooNewError(found);
  if (found >= toVersion) return found;
  db.transaction(() => {
    for (const migration of MIGRATIONS) {
      if (migration.version <= found || migration.version > toVersion) continue;
      migration.apply(db);
    }
    // user_version is part of the database header, so it commits or rolls back with the rest.
    db.pragma(`user_version = ${toVersion}`);
  })();
  return found;
}
