import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { PoolClient, QueryResultRow } from 'pg';
import { AlreadyExistsError, ClosedError, FailedPreconditionError, NotFoundError, ResourceExhaustedError, UnavailableError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { AdminTokenRecord, AdminTokenStore } from './admin-token-store.js';
import type { AuditQuery, AuditRecord, AuditStore } from './audit-store.js';
import type { EventFilter, EventIdRange, EventRecord, EventStore, NewEventRecord } from './event-store.js';
import { migratePostgres } from './postgres-schema.js';
import { AGENT_COLUMNS, HOST_COLUMNS } from './patch-columns.js';
import { AGENT_INSERT_COLUMNS, agentValues, columnValue, HOST_INSERT_COLUMNS, hostValues } from './postgres-rows.js';
import { redactConnectionString } from './postgres-url.js';
import { RESTORE_GENERATION_GAP } from './sqlite-backup.js';
import {
  adminTokenFromRow,
  agentFromRow,
  auditFromRow,
  drainFromRow,
  eventFromRow,
  hostFromRow,
  keyFromRow,
  messageFromRow,
  moveFromRow,
  transitionFromRow,
  type AdminTokenRow,
  type AgentRow,
  type AuditRow,
  type DrainRow,
  type EventRow,
  type HostRow,
  type KeyRow,
  type MessageRow,
  type MoveRow,
  type TransitionRow,
} from './store-rows.js';
import { ENDED_AGENT_STATES, LIVE_AGENT_STATES, MAX_TRANSITIONS_PER_AGENT, senderName, senderPrincipal } from './store.js';
import type {
  AgentCredentialState,
  AgentExpectation,
  AgentMoveRecord,
  AgentPatch,
  AgentRecord,
  AgentStateName,
  AgentTransitionRecord,
  AppendRequest,
  AppendResult,
  HostDrainRecord,
  HostDrainState,
  HostExpectation,
  HostLoad,
  HostPatch,
  HostRecord,
  HostStateName,
  MessageRecord,
  MessageStateName,
  OutboxBatch,
  Page,
  PlaceAgentResult,
  ReserveMoveResult,
  SigningKeyRecord,
  SigningKeyTransition,
  Store,
} from './store.js';

/** Connections the pool opens at most, by default (each is a server process: see `max_connections`). */
export const DEFAULT_POSTGRES_POOL_SIZE = 10;

/** Longest wait for a row lock before a statement fails (a paused writer must not stall every other one for ever). */
const DEFAULT_LOCK_TIMEOUT_MS = 5_000;
/** A connection idle inside a transaction this long (a paused or partitioned control plane) is closed by the server, its locks released. */
const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000;
/** Longest a statement may run: well past any the store makes, short of holding locks without end. */
const DEFAULT_STATEMENT_TIMEOUT_MS = 60_000;
/** Longest wait for a connection (the pool full, or the server unreachable). */
const CONNECT_TIMEOUT_MS = 10_000;
/** Times a transaction is run when PostgreSQL picks it as a deadlock victim (it rolled back whole, so running it again is safe). */
const MAX_TRANSACTION_ATTEMPTS = 3;
/** Longest reason kept in a transition (a host's detail can be long). */
const MAX_REASON_CHARS = 1024;
/** Longest refusal reason kept with a message. */
const MAX_ERROR_CHARS = 1024;

/** PostgreSQL's int8 type: parsed to a number (every BIGINT the store holds is far below 2^53). */
const INT8_OID = 20;

/** Options of {@link PostgresStore.open}. */
export interface PostgresStoreOptions {
  /** Connections at most (default {@link DEFAULT_POSTGRES_POOL_SIZE}). */
  poolSize?: number;
  /** Where the pool reports a connection that failed while idle (the server restarted); nothing is lost, the pool opens another. */
  logger?: Logger;
  lockTimeoutMs?: number;
  idleInTransactionTimeoutMs?: number;
  statementTimeoutMs?: number;
}

/** What {@link PostgresStore.startNewEpoch} did. */
export interface NewEpochSummary {
  previousEpoch: string;
  epoch: string;
  joinTokensBurnt: number;
  hosts: number;
  agents: number;
}

/** Thrown inside a key transition whose condition does not hold, to roll it back. */
class TransitionRefused extends Error {}

/** The SQLSTATE of a PostgreSQL error, or a Node errno code for a connection failure. */
function errorCode(err: unknown): string | undefined {
  const code = err instanceof Error && 'code' in err ? (err as { code: unknown }).code : undefined;
  return typeof code === 'string' ? code : undefined;
}

function isUniqueViolation(err: unknown): boolean {
  return errorCode(err) === '23505';
}

/** Node's codes for a connection that could not be made or was lost. */
const CONNECTION_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'EAI_AGAIN']);

/**
 * What a PostgreSQL failure becomes at the store's edge, as SQLite's do: a full
 * disk is ResourceExhaustedError; an unreachable server, a lock held past
 * `lock_timeout` or a server shutting down is UnavailableError (retry later);
 * anything else is left as it is. Messages name no connection string.
 */
function storeError(err: unknown): Error {
  const code = errorCode(err);
  if (code === '53100') return new ResourceExhaustedError('the PostgreSQL store is full (disk full); nothing was written', { cause: err });
  if (code === '55P03') return new UnavailableError('a row the store needed stayed locked past lock_timeout; nothing was written', { cause: err });
  if (code === '57014') return new UnavailableError('a store statement ran past statement_timeout and was cancelled; nothing was written', { cause: err });
  if (code !== undefined && (code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || CONNECTION_ERRNOS.has(code))) {
    return new UnavailableError(`the PostgreSQL store is unreachable (${code})`, { cause: err });
  }
  if (err instanceof Error && /timeout exceeded when trying to connect|Connection terminated/i.test(err.message)) {
    return new UnavailableError(`the PostgreSQL store is unreachable (${err.message})`, { cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}

/** Positional parameters of one statement: `add` returns the placeholder of the value it takes. */
class Params {
  readonly values: unknown[] = [];

  add(value: unknown): string {
    this.values.push(value);
    return `$${this.values.length}`;
  }
}

/** `SET` clauses of a patch (the fields it gives), or undefined for an empty patch. */
function setClauses<K extends string>(patch: Partial<Record<K, unknown>>, columns: Record<K, string>, params: Params): string | undefined {
  const entries = Object.entries(patch).filter(([, value]) => value !== undefined) as [K, unknown][];
  if (entries.length === 0) return undefined;
  return entries.map(([key]) => `${columns[key]} = ${params.add(columnValue(patch[key]))}`).join(', ');
}

/** `WHERE` conditions of an agent expectation, on a table aliased as `prefix`. */
function agentConditions(expect: AgentExpectation, params: Params, prefix = ''): string[] {
  const where: string[] = [];
  if (expect.incarnation !== undefined) where.push(`${prefix}incarnation = ${params.add(expect.incarnation)}`);
  if (expect.generation !== undefined) where.push(`${prefix}generation = ${params.add(expect.generation)}`);
  if (expect.states !== undefined) where.push(`${prefix}state = ANY(${params.add([...expect.states])}::text[])`);
  return where;
}

function page<T>(rows: T[], limit: number, idOf: (row: T) => string): Page<T> {
  if (rows.length <= limit) return { items: rows, nextAfterId: null };
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  return { items, nextAfterId: last === undefined ? null : idOf(last) };
}

/**
 * The {@link Store} on PostgreSQL (node-postgres, a bounded pool), with the
 * SQLite store's guarantees and no single writer: several control planes may
 * share one database, so nothing rests on an in-process lock.
 *
 * - Every method is one transaction (reads: one statement).
 * - A conditional update is one `UPDATE … WHERE <expected> … RETURNING`.
 * - A read that decides a write locks what it read (`FOR UPDATE`): placement
 *   locks its host row (capacity), a join lease its host row.
 * - Outbox seqs come from `UPDATE agents SET last_seq = last_seq + n … RETURNING`
 *   in the appending transaction: a seq is taken only by a commit, so seqs are
 *   gapless and in commit order (a sequence would leave a gap per rollback,
 *   which a host would wait on for ever). Each append of a batch has its own
 *   savepoint; acks only move forward (`GREATEST`).
 * - The one-signer-per-purpose rule and idempotency keys are unique indexes.
 *
 * Lock order, so that writers wait rather than deadlock: an agent's row before
 * its messages and before a host's row. Every transaction touching an outbox
 * locks its agent first; a batch locks all of its agents first, in id order.
 * A deadlock PostgreSQL still finds (two agents moving between two hosts in
 * opposite directions at once) rolls one transaction back whole; it is run again.
 */
export class PostgresStore implements Store, AdminTokenStore, AuditStore, EventStore {
  readonly #pool: pg.Pool;
  #isClosed = false;
  #closing: Promise<void> | undefined;

  private constructor(pool: pg.Pool) {
    this.#pool = pool;
  }

  /**
   * Connects to `url` (a `postgres://` connection string; `?options=-c search_path=…`
   * picks a schema) and migrates its schema to this binary's under an advisory
   * lock; a schema newer than this binary is refused with PostgresSchemaTooNewError.
   * Unreachable: UnavailableError, naming the URL without its password.
   */
  static async open(url: string, options: PostgresStoreOptions = {}): Promise<PostgresStore> {
    // This pool's own parsers (never pg's global ones: no module-level state): int8 to a number.
    const types: pg.CustomTypesConfig = {
      getTypeParser: ((oid: number, format?: 'text' | 'binary'): unknown =>
        oid === INT8_OID && format !== 'binary' ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format ?? 'text')) as pg.CustomTypesConfig['getTypeParser'],
    };
    const pool = new pg.Pool({
      connectionString: url,
      max: options.poolSize ?? DEFAULT_POSTGRES_POOL_SIZE,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      idleTimeoutMillis: 30_000,
      // Set on every connection at startup (the URL may override them): a paused or partitioned
      // control plane must not hold row locks, nor wait on them, for ever.
      lock_timeout: options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS,
      idle_in_transaction_session_timeout: options.idleInTransactionTimeoutMs ?? DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
      statement_timeout: options.statementTimeoutMs ?? DEFAULT_STATEMENT_TIMEOUT_MS,
      types,
    });
    // An idle connection the server drops emits here; without a listener it would end the process.
    pool.on('error', (err) => options.logger?.warn({ err: { message: err.message, code: errorCode(err) } }, 'a PostgreSQL store connection failed while idle'));
    try {
      const client = await pool.connect();
      try {
        await migratePostgres(client, randomUUID());
      } finally {
        client.release();
      }
    } catch (err) {
      await pool.end().catch(() => undefined);
      const mapped = storeError(err);
      if (mapped instanceof UnavailableError) {
        throw new UnavailableError(`cannot open the PostgreSQL store at ${redactConnectionString(url)}: ${mapped.message}`, { cause: err });
      }
      throw mapped;
    }
    return new PostgresStore(pool);
  }

  #checkOpen(): void {
    if (this.#isClosed) throw new ClosedError('store');
  }

  /** One statement, outside any explicit transaction (itself one). */
  async #query<R extends QueryResultRow>(sql: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    this.#checkOpen();
    try {
      return await this.#pool.query<R>(sql, values);
    } catch (err) {
      throw storeError(err);
    }
  }

  /** Runs `body` in one transaction on one connection; commits if it returns, rolls back if it throws. */
  async #tx<T>(body: (client: PoolClient) => Promise<T>): Promise<T> {
    this.#checkOpen();
    for (let attempt = 1; ; attempt++) {
      let client: PoolClient;
      try {
        client = await this.#pool.connect();
      } catch (err) {
        throw storeError(err);
      }
      let isBroken = false;
      try {
        await client.query('BEGIN');
        const result = await body(client);
        await client.query('COMMIT');
        return result;
      } catch (err) {
        try {
          await client.query('ROLLBACK');
        } catch {
          isBroken = true;
        }
        // 40P01: chosen as a deadlock victim, rolled back whole.
        if (errorCode(err) === '40P01' && attempt < MAX_TRANSACTION_ATTEMPTS) continue;
        throw storeError(err);
      } finally {
        client.release(isBroken);
      }
    }
  }

  /** @internal For tests: the session settings every connection of the pool runs with. */
  async sessionSettings(): Promise<Record<string, string>> {
    const names = ['lock_timeout', 'idle_in_transaction_session_timeout', 'statement_timeout', 'synchronous_commit'];
    const row = (await this.#query<Record<string, string>>(`SELECT ${names.map((n) => `current_setting('${n}') AS ${n}`).join(', ')}`)).rows[0];
    return row ?? {};
  }

  epoch(): Promise<string> {
    return this.#query<{ value: string }>("SELECT value FROM meta WHERE key = 'epoch'").then((r) => r.rows[0]?.value ?? '');
  }

  /**
   * Starts a new history after the database was restored from a dump (or
   * failed over to a replica that lost commits), as `control-plane restore`
   * does for SQLite: a new epoch, every generation advanced past any the lost
   * history can have reached, and unused join tokens burnt. Run it with every
   * control plane stopped.
   */
  startNewEpoch(): Promise<NewEpochSummary> {
    return this.#tx(async (client) => {
      const previous = await client.query<{ value: string }>("SELECT value FROM meta WHERE key = 'epoch' FOR UPDATE");
      const epoch = randomUUID();
      await client.query("UPDATE meta SET value = $1 WHERE key = 'epoch'", [epoch]);
      const agents = (await client.query('UPDATE agents SET generation = generation + $1', [RESTORE_GENERATION_GAP])).rowCount ?? 0;
      const hosts = (await client.query('UPDATE hosts SET credential_generation = credential_generation + $1', [RESTORE_GENERATION_GAP])).rowCount ?? 0;
      const burnt = await client.query('UPDATE hosts SET join_secret_hash = NULL, join_lease_session_id = NULL WHERE join_secret_hash IS NOT NULL');
      return { previousEpoch: previous.rows[0]?.value ?? '', epoch, joinTokensBurnt: burnt.rowCount ?? 0, hosts, agents };
    });
  }

  async listSigningKeys(): Promise<SigningKeyRecord[]> {
    return (await this.#query<KeyRow>('SELECT * FROM signing_keys ORDER BY created_at_ms, kid')).rows.map(keyFromRow);
  }

  async insertSigningKey(key: SigningKeyRecord): Promise<void> {
    try {
      await this.#query(
        `INSERT INTO signing_keys (kid, purpose, state, private_jwk, public_jwk, created_at_ms, signing_since_ms, retired_at_ms, verify_until_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
        [key.kid, key.purpose, key.state, key.privateJwk, key.publicJwk, key.createdAtMs, key.signingSinceMs, key.retiredAtMs, key.verifyUntilMs],
      );
    } catch (err) {
      if (isUniqueViolation(err)) throw new AlreadyExistsError(`signing key ${key.kid} or another ${key.state} key of ${key.purpose} exists`, { cause: err });
      throw err;
    }
  }

  async transitionSigningKeys(transitions: readonly SigningKeyTransition[]): Promise<boolean> {
    try {
      return await this.#tx(async (client) => {
        for (const step of transitions) {
          let result: pg.QueryResult;
          if (step.to === 'signing') {
            result = await client.query("UPDATE signing_keys SET state = 'signing', signing_since_ms = $1 WHERE kid = $2 AND state = $3", [step.atMs, step.kid, step.from]);
          } else if (step.to === 'standby') {
            result = await client.query("UPDATE signing_keys SET state = 'standby' WHERE kid = $1 AND state = $2", [step.kid, step.from]);
          } else {
            // A key that stops signing loses its private half in the same statement.
            result = await client.query(
              'UPDATE signing_keys SET state = $1, private_jwk = NULL, retired_at_ms = COALESCE(retired_at_ms, $2), verify_until_ms = $3 WHERE kid = $4 AND state = $5',
              [step.to, step.atMs, step.verifyUntilMs ?? null, step.kid, step.from],
            );
          }
          // Throwing rolls back every step already applied. A concurrent rotation that changed the
          // key first makes this WHERE fail once its commit releases the row.
          if (result.rowCount !== 1) throw new TransitionRefused();
        }
        return true;
      });
    } catch (err) {
      if (err instanceof TransitionRefused || isUniqueViolation(err)) return false;
      throw err;
    }
  }

  async fixSigningKeyVerifyUntil(verifyUntilMs: number): Promise<number> {
    const result = await this.#query(
      "UPDATE signing_keys SET verify_until_ms = $1 WHERE state IN ('verifying-only', 'revoked') AND verify_until_ms IS NULL",
      [verifyUntilMs],
    );
    return result.rowCount ?? 0;
  }

  async deleteExpiredSigningKeys(nowMs: number): Promise<string[]> {
    const result = await this.#query<{ kid: string }>(
      "DELETE FROM signing_keys WHERE state IN ('verifying-only', 'revoked') AND verify_until_ms IS NOT NULL AND verify_until_ms <= $1 RETURNING kid",
      [nowMs],
    );
    return result.rows.map((row) => row.kid);
  }

  async markAgentRotationsDue(issuedFromMs: number, issuedUntilMs: number, dueAtMs: number): Promise<number> {
    const result = await this.#query(
      'UPDATE agents SET rotation_due_at_ms = $1 WHERE state = ANY($2::text[]) AND issued_at_ms >= $3 AND issued_at_ms <= $4 AND rotation_due_at_ms > $1',
      [dueAtMs, [...LIVE_AGENT_STATES], issuedFromMs, issuedUntilMs],
    );
    return result.rowCount ?? 0;
  }

  async insertHost(host: HostRecord): Promise<void> {
    try {
      await this.#query(`INSERT INTO hosts (${HOST_INSERT_COLUMNS}) VALUES (${hostValues(host).map((_, i) => `$${i + 1}`).join(', ')})`, hostValues(host));
    } catch (err) {
      if (isUniqueViolation(err)) throw new AlreadyExistsError(`host ${host.hostId} exists`, { cause: err });
      throw err;
    }
  }

  async getHost(hostId: string): Promise<HostRecord | undefined> {
    const row = (await this.#query<HostRow>('SELECT * FROM hosts WHERE host_id = $1', [hostId])).rows[0];
    return row === undefined ? undefined : hostFromRow(row);
  }

  async updateHost(hostId: string, patch: HostPatch, expect: HostExpectation = {}): Promise<HostRecord | undefined> {
    const params = new Params();
    const sets = setClauses(patch, HOST_COLUMNS, params) ?? 'host_id = host_id';
    const where = [`host_id = ${params.add(hostId)}`];
    if (expect.states !== undefined) where.push(`state = ANY(${params.add([...expect.states])}::text[])`);
    if (expect.credentialGeneration !== undefined) where.push(`credential_generation = ${params.add(expect.credentialGeneration)}`);
    if (expect.minValidGeneration !== undefined) where.push(`min_valid_generation = ${params.add(expect.minValidGeneration)}`);
    if (expect.joinLeaseSessionId !== undefined) {
      where.push(expect.joinLeaseSessionId === null ? 'join_lease_session_id IS NULL' : `join_lease_session_id = ${params.add(expect.joinLeaseSessionId)}`);
    }
    const row = (await this.#query<HostRow>(`UPDATE hosts SET ${sets} WHERE ${where.join(' AND ')} RETURNING *`, params.values)).rows[0];
    return row === undefined ? undefined : hostFromRow(row);
  }

  async getHostLoads(hostIds: readonly string[]): Promise<Map<string, HostLoad>> {
    const rows = (
      await this.#query<{ host_id: string; state: string; capacity: number; load: number; is_schedulable: boolean }>(
        'SELECT host_id, state, capacity, load, is_schedulable FROM hosts WHERE host_id = ANY($1::text[])',
        [[...hostIds]],
      )
    ).rows;
    return new Map(
      rows.map((row) => [
        row.host_id,
        { hostId: row.host_id, state: row.state as HostStateName, capacity: row.capacity, load: row.load, isSchedulable: row.is_schedulable },
      ]),
    );
  }

  async listHosts(afterId: string | null, limit: number): Promise<Page<HostRecord>> {
    const rows = (await this.#query<HostRow>('SELECT * FROM hosts WHERE host_id > $1 ORDER BY host_id LIMIT $2', [afterId ?? '', limit + 1])).rows;
    return page(rows.map(hostFromRow), limit, (host) => host.hostId);
  }

  leaseJoinToken(hostId: string, sessionId: string, nowMs: number, isLeaseLive: (sessionId: string) => boolean): Promise<HostRecord | undefined> {
    return this.#tx(async (client) => {
      // Locked until commit: of two sessions (on one control plane or two) the second reads the first's lease.
      const row = (await client.query<HostRow>('SELECT * FROM hosts WHERE host_id = $1 FOR UPDATE', [hostId])).rows[0];
      if (row === undefined) return undefined;
      const host = hostFromRow(row);
      if (host.state === 'revoked' || host.joinSecretHash === null || nowMs >= host.joinExpiresAtMs) return undefined;
      if (host.joinLeaseSessionId !== null && isLeaseLive(host.joinLeaseSessionId)) return undefined;
      const updated = (await client.query<HostRow>('UPDATE hosts SET join_lease_session_id = $1 WHERE host_id = $2 RETURNING *', [sessionId, hostId])).rows[0];
      return updated === undefined ? undefined : hostFromRow(updated);
    });
  }

  insertAgent(agent: AgentRecord, reason = ''): Promise<void> {
    return this.#tx(async (client) => {
      const values = agentValues(agent);
      try {
        await client.query(`INSERT INTO agents (${AGENT_INSERT_COLUMNS}) VALUES (${values.map((_, i) => `$${i + 1}`).join(', ')})`, values);
      } catch (err) {
        if (isUniqueViolation(err)) throw new AlreadyExistsError(`agent ${agent.agentId} exists`, { cause: err });
        throw err;
      }
      await recordTransition(client, agent.agentId, agent.createdAtMs, null, agent, reason);
    });
  }

  async listAgentTransitions(agentId: string, limit: number): Promise<AgentTransitionRecord[]> {
    const rows = (
      await this.#query<TransitionRow>('SELECT * FROM agent_state_history WHERE agent_id = $1 ORDER BY id DESC LIMIT $2', [
        agentId,
        Math.max(0, Math.min(limit, MAX_TRANSITIONS_PER_AGENT)),
      ])
    ).rows;
    return rows.reverse().map(transitionFromRow);
  }

  async getAgent(agentId: string): Promise<AgentRecord | undefined> {
    const row = (await this.#query<AgentRow>('SELECT * FROM agents WHERE agent_id = $1', [agentId])).rows[0];
    return row === undefined ? undefined : agentFromRow(row);
  }

  async getAgentCredentialState(agentId: string): Promise<AgentCredentialState | undefined> {
    const row = (
      await this.#query<Pick<AgentRow, 'state' | 'host_id' | 'incarnation' | 'generation' | 'expires_at_ms' | 'previous_expires_at_ms' | 'acked_generation'>>(
        'SELECT state, host_id, incarnation, generation, expires_at_ms, previous_expires_at_ms, acked_generation FROM agents WHERE agent_id = $1',
        [agentId],
      )
    ).rows[0];
    if (row === undefined) return undefined;
    return {
      agentId,
      state: row.state as AgentStateName,
      hostId: row.host_id,
      incarnation: row.incarnation,
      generation: row.generation,
      expiresAtMs: row.expires_at_ms,
      previousExpiresAtMs: row.previous_expires_at_ms,
      ackedGeneration: row.acked_generation,
    };
  }

  async patchAgent(agentId: string, patch: AgentPatch, expect: AgentExpectation): Promise<boolean> {
    // A change of state, host or incarnation is a transition, which only updateAgent records.
    if (patch.state !== undefined || patch.hostId !== undefined || patch.incarnation !== undefined) {
      throw new Error("patchAgent cannot change an agent's state, host or incarnation: use updateAgent");
    }
    const params = new Params();
    // An empty patch still answers whether the agent meets the expectation.
    const sets = setClauses(patch, AGENT_COLUMNS, params) ?? 'agent_id = agent_id';
    const where = [`agent_id = ${params.add(agentId)}`, ...agentConditions(expect, params)];
    const result = await this.#query(`UPDATE agents SET ${sets} WHERE ${where.join(' AND ')}`, params.values);
    return (result.rowCount ?? 0) > 0;
  }

  updateAgent(agentId: string, patch: AgentPatch, expect: AgentExpectation = {}, reason?: string): Promise<AgentRecord | undefined> {
    return this.#tx(async (client) => {
      // One conditional UPDATE: the CTE locks the row only if it meets the expectation (re-checked
      // against a concurrent writer's commit) and hands the statement what the row was before.
      const params = new Params();
      const id = params.add(agentId);
      const sets = setClauses(patch, AGENT_COLUMNS, params) ?? 'agent_id = a.agent_id';
      const where = [`agent_id = ${id}`, ...agentConditions(expect, params)];
      const row = (
        await client.query<AgentRow & { before_state: string; before_host_id: string | null; before_incarnation: number }>(
          `WITH prior AS (SELECT state, host_id, incarnation FROM agents WHERE ${where.join(' AND ')} FOR UPDATE)
           UPDATE agents a SET ${sets} FROM prior WHERE a.agent_id = ${id}
           RETURNING a.*, prior.state AS before_state, prior.host_id AS before_host_id, prior.incarnation AS before_incarnation`,
          params.values,
        )
      ).rows[0];
      if (row === undefined) return undefined;
      const updated = agentFromRow(row);
      if (updated.state !== row.before_state || updated.hostId !== row.before_host_id || updated.incarnation !== row.before_incarnation) {
        await recordTransition(client, agentId, updated.updatedAtMs, row.before_state as AgentStateName, updated, reason ?? patch.detail ?? '');
      }
      return updated;
    });
  }

  placeAgent(agentId: string, patch: AgentPatch & { hostId: string }, expect: AgentExpectation, reason?: string): Promise<PlaceAgentResult> {
    return this.#tx(async (client): Promise<PlaceAgentResult> => {
      const params = new Params();
      const where = [`agent_id = ${params.add(agentId)}`, ...agentConditions(expect, params)];
      const currentRow = (await client.query<AgentRow>(`SELECT * FROM agents WHERE ${where.join(' AND ')} FOR UPDATE`, params.values)).rows[0];
      if (currentRow === undefined) return { outcome: 'agent-changed' };
      const current = agentFromRow(currentRow);
      // The host row stays locked to commit: a concurrent placement on it (from this control plane or
      // another) waits, then reads the load this one leaves. Without the lock both could take the last place.
      const host = (
        await client.query<{ state: string; capacity: number; load: number; is_schedulable: boolean }>(
          'SELECT state, capacity, load, is_schedulable FROM hosts WHERE host_id = $1 FOR UPDATE',
          [patch.hostId],
        )
      ).rows[0];
      if (host === undefined || host.state === 'revoked') return { outcome: 'host-unavailable' };
      const state = patch.state ?? current.state;
      // Room reserved for a move to this host (agent_moves) counts already: placing it there takes that room.
      const move = (await client.query<{ to_host_id: string }>('SELECT to_host_id FROM agent_moves WHERE agent_id = $1', [agentId])).rows[0];
      const isReserved = move?.to_host_id === patch.hostId && LIVE_AGENT_STATES.includes(state);
      const isCounted = (current.hostId === patch.hostId && LIVE_AGENT_STATES.includes(current.state)) || isReserved;
      if (LIVE_AGENT_STATES.includes(state) && !isCounted && !host.is_schedulable) return { outcome: 'host-unavailable' };
      if (LIVE_AGENT_STATES.includes(state) && !isCounted && host.capacity > 0 && host.load >= host.capacity) return { outcome: 'host-full' };
      const placed = await patchAgentRow(client, current, patch, reason);
      // The reservation became the agent's place (its trigger gives back the room the agent now holds).
      if (isReserved) await client.query('DELETE FROM agent_moves WHERE agent_id = $1', [agentId]);
      return { outcome: 'placed', agent: placed };
    });
  }

  async listAgents(filter: { hostId?: string; states?: readonly AgentStateName[] }, afterId: string | null, limit: number): Promise<Page<AgentRecord>> {
    const params = new Params();
    const where = [`agent_id > ${params.add(afterId ?? '')}`];
    if (filter.hostId !== undefined) where.push(`host_id = ${params.add(filter.hostId)}`);
    if (filter.states !== undefined) where.push(`state = ANY(${params.add([...filter.states])}::text[])`);
    const rows = (await this.#query<AgentRow>(`SELECT * FROM agents WHERE ${where.join(' AND ')} ORDER BY agent_id LIMIT ${params.add(limit + 1)}`, params.values)).rows;
    return page(rows.map(agentFromRow), limit, (agent) => agent.agentId);
  }

  async countAgentsByHost(states: readonly AgentStateName[]): Promise<Map<string, number>> {
    const rows = (
      await this.#query<{ host_id: string; n: number }>(
        'SELECT host_id, COUNT(*) AS n FROM agents WHERE host_id IS NOT NULL AND state = ANY($1::text[]) GROUP BY host_id',
        [[...states]],
      )
    ).rows;
    return new Map(rows.map((row) => [row.host_id, row.n]));
  }

  async countAgentsByState(): Promise<Map<AgentStateName, number>> {
    const rows = (await this.#query<{ state: AgentStateName; n: number }>('SELECT state, COUNT(*) AS n FROM agents GROUP BY state')).rows;
    return new Map(rows.map((row) => [row.state, row.n]));
  }

  async countPendingMessages(): Promise<number> {
    return (await this.#query<{ n: number }>("SELECT COUNT(*) AS n FROM messages WHERE state = 'pending'")).rows[0]?.n ?? 0;
  }

  async countOutboxBytes(): Promise<number> {
    // One row per agent (kept by the triggers on messages), not a scan of the payloads.
    return (await this.#query<{ n: number }>('SELECT COALESCE(SUM(outbox_bytes), 0)::bigint AS n FROM agents')).rows[0]?.n ?? 0;
  }

  applyOutboxBatch(batch: OutboxBatch): Promise<(AppendResult[] | Error)[]> {
    return this.#tx(async (client) => {
      // Every agent of the batch locked first, in id order: two batches on the same agents wait for each other instead of deadlocking.
      const agentIds = [...new Set([...batch.appends.map((a) => a.agentId), ...batch.acks.map((a) => a.agentId)])].sort();
      if (agentIds.length > 0) await client.query('SELECT 1 FROM agents WHERE agent_id = ANY($1::text[]) ORDER BY agent_id FOR UPDATE', [agentIds]);
      const results: (AppendResult[] | Error)[] = [];
      for (const request of batch.appends) {
        // A savepoint per request, so one refused append leaves the others in the batch.
        await client.query('SAVEPOINT tether_append');
        try {
          results.push(await append(client, request));
          await client.query('RELEASE SAVEPOINT tether_append');
        } catch (err) {
          if (err instanceof NotFoundError || err instanceof FailedPreconditionError || err instanceof ResourceExhaustedError) {
            await client.query('ROLLBACK TO SAVEPOINT tether_append');
            results.push(err);
            continue;
          }
          throw err;
        }
      }
      for (const { agentId, seq } of batch.acks) {
        // The watermark only moves forward, whatever order acks commit in.
        await client.query('UPDATE agents SET acked_seq = GREATEST(acked_seq, $1) WHERE agent_id = $2', [seq, agentId]);
        await client.query("UPDATE messages SET state = 'acked', payload = ''::bytea WHERE agent_id = $1 AND state = 'pending' AND seq <= $2", [agentId, seq]);
      }
      return results;
    });
  }

  async listDeliverable(agentId: string, afterSeq: number, limit: number): Promise<MessageRecord[]> {
    const rows = (
      await this.#query<MessageRow>("SELECT * FROM messages WHERE agent_id = $1 AND seq > $2 AND state IN ('pending', 'dead') ORDER BY seq LIMIT $3", [
        agentId,
        afterSeq,
        limit,
      ])
    ).rows;
    return rows.map(messageFromRow);
  }

  recordRefusal(agentId: string, seq: number, error: string, maxAttempts: number): Promise<MessageRecord | undefined> {
    return this.#tx(async (client) => {
      await lockAgent(client, agentId);
      const row = (
        await client.query<MessageRow>(
          `UPDATE messages SET attempts = attempts + 1, last_error = $3, state = CASE WHEN attempts + 1 >= $4 THEN 'dead' ELSE 'pending' END
           WHERE agent_id = $1 AND seq = $2 AND state = 'pending' RETURNING *`,
          [agentId, seq, error.slice(0, MAX_ERROR_CHARS), maxAttempts],
        )
      ).rows[0];
      return row === undefined ? undefined : messageFromRow(row);
    });
  }

  async listMessages(agentId: string, states: readonly MessageStateName[], afterSeq: number, limit: number): Promise<MessageRecord[]> {
    const rows = (
      await this.#query<MessageRow>('SELECT * FROM messages WHERE agent_id = $1 AND seq > $2 AND state = ANY($3::text[]) ORDER BY seq LIMIT $4', [
        agentId,
        afterSeq,
        [...states],
        limit,
      ])
    ).rows;
    return rows.map(messageFromRow);
  }

  requeueMessage(agentId: string, seq: number): Promise<number> {
    return this.#tx(async (client) => {
      await lockAgent(client, agentId);
      const row = (await client.query<MessageRow>("SELECT * FROM messages WHERE agent_id = $1 AND seq = $2 AND state = 'dead' FOR UPDATE", [agentId, seq])).rows[0];
      if (row === undefined) throw new NotFoundError(`no dead letter ${agentId}/${seq}`);
      const newSeq = (await client.query<{ last_seq: number }>('UPDATE agents SET last_seq = last_seq + 1 WHERE agent_id = $1 RETURNING last_seq', [agentId])).rows[0]
        ?.last_seq;
      if (newSeq === undefined) throw new NotFoundError(`no agent ${agentId}`);
      // The idempotency key stays with the original row, which keeps answering retried sends.
      await client.query("UPDATE messages SET state = 'requeued', payload = ''::bytea WHERE agent_id = $1 AND seq = $2", [agentId, seq]);
      await client.query(
        `INSERT INTO messages (agent_id, seq, id, sender, sender_principal, content_type, payload, created_at_ms, state, attempts, last_error, idempotency_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, '', NULL)`,
        [agentId, newSeq, row.id, row.sender, row.sender_principal, row.content_type, row.payload, row.created_at_ms],
      );
      return newSeq;
    });
  }

  purgeMessage(agentId: string, seq: number): Promise<void> {
    return this.#tx(async (client) => {
      await lockAgent(client, agentId);
      const result = await client.query("DELETE FROM messages WHERE agent_id = $1 AND seq = $2 AND state = 'dead'", [agentId, seq]);
      if (result.rowCount === 0) throw new NotFoundError(`no dead letter ${agentId}/${seq}`);
    });
  }

  pruneMessages(ackedBeforeMs: number, endedBeforeMs: number): Promise<number> {
    return this.#tx(async (client) => {
      const acked = await client.query("DELETE FROM messages WHERE state IN ('acked', 'requeued') AND created_at_ms < $1", [ackedBeforeMs]);
      const gone = await client.query(
        'DELETE FROM messages WHERE agent_id IN (SELECT agent_id FROM agents WHERE state = ANY($1::text[]) AND updated_at_ms < $2)',
        [[...ENDED_AGENT_STATES], endedBeforeMs],
      );
      return (acked.rowCount ?? 0) + (gone.rowCount ?? 0);
    });
  }

  setHostDrain(hostId: string, state: HostDrainState | null, nowMs: number): Promise<HostDrainRecord | undefined> {
    return this.#tx(async (client) => {
      const host = await client.query('SELECT 1 FROM hosts WHERE host_id = $1 FOR UPDATE', [hostId]);
      if (host.rowCount === 0) throw new NotFoundError(`no host ${hostId}`);
      const beforeRow = (await client.query<DrainRow>('SELECT host_id, state, started_at_ms, updated_at_ms FROM host_drains WHERE host_id = $1', [hostId])).rows[0];
      if (state === null) {
        await client.query('DELETE FROM host_drains WHERE host_id = $1', [hostId]);
        await client.query('UPDATE hosts SET is_schedulable = TRUE WHERE host_id = $1', [hostId]);
      } else {
        await client.query(
          `INSERT INTO host_drains (host_id, state, started_at_ms, updated_at_ms) VALUES ($1, $2, $3, $3)
           ON CONFLICT (host_id) DO UPDATE SET state = excluded.state, updated_at_ms = excluded.updated_at_ms`,
          [hostId, state, nowMs],
        );
        await client.query('UPDATE hosts SET is_schedulable = FALSE WHERE host_id = $1', [hostId]);
      }
      return beforeRow === undefined ? undefined : drainFromRow(beforeRow);
    });
  }

  async getHostDrain(hostId: string): Promise<HostDrainRecord | undefined> {
    const row = (await this.#query<DrainRow>('SELECT host_id, state, started_at_ms, updated_at_ms FROM host_drains WHERE host_id = $1', [hostId])).rows[0];
    return row === undefined ? undefined : drainFromRow(row);
  }

  async listHostDrains(): Promise<HostDrainRecord[]> {
    return (await this.#query<DrainRow>('SELECT host_id, state, started_at_ms, updated_at_ms FROM host_drains ORDER BY host_id')).rows.map(drainFromRow);
  }

  reserveMove(agentId: string, fromHostId: string, toHostId: string, incarnation: number, nowMs: number): Promise<ReserveMoveResult> {
    return this.#tx(async (client): Promise<ReserveMoveResult> => {
      const agent = (
        await client.query<{ host_id: string | null; incarnation: number; state: AgentStateName }>(
          'SELECT host_id, incarnation, state FROM agents WHERE agent_id = $1 FOR UPDATE',
          [agentId],
        )
      ).rows[0];
      if (agent?.host_id !== fromHostId || agent.incarnation !== incarnation || !LIVE_AGENT_STATES.includes(agent.state)) return 'agent-changed';
      if ((await client.query('SELECT 1 FROM agent_moves WHERE agent_id = $1', [agentId])).rowCount !== 0) return 'agent-changed';
      // Locked like placement's: the room reserved here is counted before another placement reads the load.
      const host = (
        await client.query<{ state: string; capacity: number; load: number; is_schedulable: boolean }>(
          'SELECT state, capacity, load, is_schedulable FROM hosts WHERE host_id = $1 FOR UPDATE',
          [toHostId],
        )
      ).rows[0];
      if (host === undefined || host.state === 'revoked' || !host.is_schedulable) return 'host-unavailable';
      if (host.capacity > 0 && host.load >= host.capacity) return 'host-full';
      await client.query('INSERT INTO agent_moves (agent_id, from_host_id, to_host_id, incarnation, reserved_at_ms) VALUES ($1, $2, $3, $4, $5)', [
        agentId,
        fromHostId,
        toHostId,
        incarnation,
        nowMs,
      ]);
      return 'reserved';
    });
  }

  async getMove(agentId: string): Promise<AgentMoveRecord | undefined> {
    const row = (await this.#query<MoveRow>('SELECT * FROM agent_moves WHERE agent_id = $1', [agentId])).rows[0];
    return row === undefined ? undefined : moveFromRow(row);
  }

  async listMoves(): Promise<AgentMoveRecord[]> {
    return (await this.#query<MoveRow>('SELECT * FROM agent_moves ORDER BY agent_id')).rows.map(moveFromRow);
  }

  async releaseMove(agentId: string): Promise<void> {
    await this.#query('DELETE FROM agent_moves WHERE agent_id = $1', [agentId]);
  }

  /** Closes the pool once every transaction in flight has ended; later calls throw ClosedError. Idempotent. */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      this.#isClosed = true;
      this.#closing = this.#pool.end();
    }
    return this.#closing;
  }

  // --- Admin tokens, the audit log, lifecycle events (migration 2); each method one statement or transaction ---

  async insertAdminToken(token: AdminTokenRecord): Promise<void> {
    try {
      await this.#query(
        'INSERT INTO admin_tokens (token_id, name, role, secret_hash, created_at_ms, created_by, retired_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)',
        [token.tokenId, token.name, token.role, token.secretHash, token.createdAtMs, token.createdBy, token.retiredAtMs],
      );
    } catch (err) {
      if (isUniqueViolation(err)) throw new AlreadyExistsError(`admin token ${token.tokenId} exists`);
      throw err;
    }
  }

  /** The token with its secret's hash: the caller compares it (in constant time), never the database. */
  async getAdminToken(tokenId: string): Promise<AdminTokenRecord | undefined> {
    const row = (await this.#query<AdminTokenRow>('SELECT * FROM admin_tokens WHERE token_id = $1', [tokenId])).rows[0];
    return row === undefined ? undefined : adminTokenFromRow(row);
  }

  async listAdminTokens(afterId: string | null, limit: number): Promise<AdminTokenRecord[]> {
    return (await this.#query<AdminTokenRow>('SELECT * FROM admin_tokens WHERE token_id > $1 ORDER BY token_id LIMIT $2', [afterId ?? '', limit])).rows.map(adminTokenFromRow);
  }

  /** One UPDATE … RETURNING: retired at `nowMs`, or at the time it was first retired (kept). */
  async retireAdminToken(tokenId: string, nowMs: number): Promise<AdminTokenRecord | undefined> {
    const row = (
      await this.#query<AdminTokenRow>('UPDATE admin_tokens SET retired_at_ms = COALESCE(retired_at_ms, $2) WHERE token_id = $1 RETURNING *', [tokenId, nowMs])
    ).rows[0];
    return row === undefined ? undefined : adminTokenFromRow(row);
  }

  async appendAudit(record: Omit<AuditRecord, 'id'>): Promise<number> {
    const row = (
      await this.#query<{ id: number }>('INSERT INTO audit_records (at_ms, token_id, method, targets, code) VALUES ($1, $2, $3, $4, $5) RETURNING id', [
        record.atMs,
        record.tokenId,
        record.method,
        JSON.stringify(record.targets),
        record.code,
      ])
    ).rows[0];
    if (row === undefined) throw new Error('INSERT … RETURNING returned no row');
    return row.id;
  }

  async listAudit(query: AuditQuery): Promise<AuditRecord[]> {
    const params = new Params();
    const where = [`id > ${params.add(query.afterId)}`, `at_ms >= ${params.add(query.sinceMs ?? 0)}`];
    if (query.tokenId !== undefined) where.push(`token_id = ${params.add(query.tokenId)}`);
    const sql = `SELECT * FROM audit_records WHERE ${where.join(' AND ')} ORDER BY id LIMIT ${params.add(query.limit)}`;
    return (await this.#query<AuditRow>(sql, params.values)).rows.map(auditFromRow);
  }

  pruneAudit(beforeMs: number, maxRecords: number): Promise<number> {
    return this.#tx(async (client) => {
      const old = (await client.query('DELETE FROM audit_records WHERE at_ms < $1', [beforeMs])).rowCount ?? 0;
      const excess = (await client.query('DELETE FROM audit_records WHERE id <= (SELECT id FROM audit_records ORDER BY id DESC LIMIT 1 OFFSET $1)', [maxRecords])).rowCount ?? 0;
      return old + excess;
    });
  }

  /**
   * One statement: takes `events.length` ids from `event_ids` (its row stays
   * locked to the commit, so appends from every control plane on the database
   * commit in id order, and an id exists only once committed: no gap a reader
   * could pass over) and inserts the events with them, in order.
   */
  async appendEvents(events: readonly NewEventRecord[]): Promise<EventRecord[]> {
    if (events.length === 0) return [];
    const column = <T>(pick: (e: NewEventRecord) => T): T[] => events.map(pick);
    const row = (
      await this.#query<{ last_id: number }>(
        `WITH taken AS (UPDATE event_ids SET last_id = last_id + $1::bigint RETURNING last_id),
         added AS (
           INSERT INTO events (id, at_ms, kind, agent_id, host_id, incarnation, generation, key_id, reason, detail)
           SELECT taken.last_id - $1::bigint + e.n, e.at_ms, e.kind, e.agent_id, e.host_id, e.incarnation, e.generation, e.key_id, e.reason, e.detail
           FROM taken, unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[])
             WITH ORDINALITY AS e(at_ms, kind, agent_id, host_id, incarnation, generation, key_id, reason, detail, n)
         )
         SELECT last_id FROM taken`,
        [
          events.length,
          column((e) => e.atMs),
          column((e) => e.kind),
          column((e) => e.agentId),
          column((e) => e.hostId),
          column((e) => e.incarnation),
          column((e) => e.generation),
          column((e) => e.keyId),
          column((e) => e.reason),
          column((e) => e.detail),
        ],
      )
    ).rows[0];
    if (row === undefined) throw new Error('event_ids has no row');
    const firstId = row.last_id - events.length + 1;
    return events.map((e, i): EventRecord => ({ ...e, id: firstId + i }));
  }

  async listEvents(afterId: number, untilId: number, filter: EventFilter, limit: number): Promise<EventRecord[]> {
    const params = new Params();
    const where = [`id > ${params.add(afterId)}`, `id <= ${params.add(untilId)}`];
    if (filter.agentId !== '') where.push(`agent_id = ${params.add(filter.agentId)}`);
    if (filter.hostId !== '') where.push(`host_id = ${params.add(filter.hostId)}`);
    if (filter.kinds.length > 0) where.push(`kind = ANY(${params.add([...filter.kinds])}::text[])`);
    const sql = `SELECT * FROM events WHERE ${where.join(' AND ')} ORDER BY id LIMIT ${params.add(limit)}`;
    return (await this.#query<EventRow>(sql, params.values)).rows.map(eventFromRow);
  }

  /** One statement (one snapshot): `event_ids.last_id` is the highest id ever given, whatever was pruned since. */
  async eventIdRange(): Promise<EventIdRange> {
    const row = (await this.#query<{ first_id: number | null; last_id: number }>('SELECT (SELECT min(id) FROM events) AS first_id, (SELECT last_id FROM event_ids) AS last_id')).rows[0];
    const lastId = row?.last_id ?? 0;
    return { firstId: row?.first_id ?? lastId + 1, lastId };
  }

  /** One DELETE of a prefix in id order: up to the later of the age and count bounds, at most `maxDeleted` rows. */
  async pruneEvents(beforeMs: number, keepCount: number, maxDeleted: number): Promise<number> {
    const none = '9223372036854775807';
    // The first event to keep by age: a scan from the oldest that stops there (ids follow the clock, near enough).
    const result = await this.#query(
      `DELETE FROM events WHERE id < LEAST(
         GREATEST(
           COALESCE((SELECT id FROM events WHERE at_ms >= $1 ORDER BY id LIMIT 1), ${none}),
           CASE WHEN $2::bigint = 0 THEN ${none} ELSE COALESCE((SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $3), 0) END
         ),
         COALESCE((SELECT id FROM events ORDER BY id LIMIT 1 OFFSET $4), ${none})
       )`,
      [beforeMs, keepCount, Math.max(0, keepCount - 1), Math.max(0, maxDeleted)],
    );
    return result.rowCount ?? 0;
  }
}

/** Locks an agent's row (the first lock of any transaction that touches its outbox: see the lock order). */
async function lockAgent(client: PoolClient, agentId: string): Promise<void> {
  await client.query('SELECT 1 FROM agents WHERE agent_id = $1 FOR UPDATE', [agentId]);
}

/**
 * Appends a transition of `agentId` to `to` and drops what is beyond the
 * bound (the oldest), in the caller's transaction.
 */
async function recordTransition(
  client: PoolClient,
  agentId: string,
  atMs: number,
  from: AgentStateName | null,
  to: Pick<AgentRecord, 'state' | 'hostId' | 'incarnation'>,
  reason: string,
): Promise<void> {
  await client.query('INSERT INTO agent_state_history (agent_id, at_ms, from_state, to_state, host_id, incarnation, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)', [
    agentId,
    atMs,
    from,
    to.state,
    to.hostId,
    to.incarnation,
    reason.slice(0, MAX_REASON_CHARS),
  ]);
  await client.query(
    `DELETE FROM agent_state_history WHERE agent_id = $1 AND id <= (
       SELECT id FROM agent_state_history WHERE agent_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)`,
    [agentId, MAX_TRANSITIONS_PER_AGENT],
  );
}

/** Writes `patch` to a locked agent's row and returns it, recording a transition if its state, host or incarnation changed. */
async function patchAgentRow(client: PoolClient, current: AgentRecord, patch: AgentPatch, reason: string | undefined): Promise<AgentRecord> {
  const params = new Params();
  const sets = setClauses(patch, AGENT_COLUMNS, params) ?? 'agent_id = agent_id';
  const row = (await client.query<AgentRow>(`UPDATE agents SET ${sets} WHERE agent_id = ${params.add(current.agentId)} RETURNING *`, params.values)).rows[0];
  if (row === undefined) return current;
  const updated = agentFromRow(row);
  if (updated.state !== current.state || updated.hostId !== current.hostId || updated.incarnation !== current.incarnation) {
    await recordTransition(client, current.agentId, updated.updatedAtMs, current.state, updated, reason ?? patch.detail ?? '');
  }
  return updated;
}

/** One append request, in the caller's transaction (which holds its agent's row lock) and savepoint. */
async function append(client: PoolClient, request: AppendRequest): Promise<AppendResult[]> {
  const agent = (
    await client.query<{ state: AgentStateName; outbox_bytes: number; outbox_count: number }>(
      'SELECT state, outbox_bytes, outbox_count FROM agents WHERE agent_id = $1 FOR UPDATE',
      [request.agentId],
    )
  ).rows[0];
  if (agent === undefined) throw new NotFoundError(`no agent ${request.agentId}`);
  const principal = senderPrincipal(request.sender);
  const keys = request.messages.map((m) => m.idempotencyKey).filter((key): key is string => key !== null);
  const earlier = new Map<string, AppendResult>();
  if (keys.length > 0) {
    const rows = (
      await client.query<{ idempotency_key: string; id: string; seq: number }>(
        'SELECT idempotency_key, id, seq FROM messages WHERE agent_id = $1 AND sender_principal = $2 AND idempotency_key = ANY($3::text[])',
        [request.agentId, principal, keys],
      )
    ).rows;
    for (const row of rows) earlier.set(row.idempotency_key, { id: row.id, seq: row.seq, isDuplicate: true });
  }
  const results: AppendResult[] = [];
  /** Fresh messages with the result each fills (its seq set once the seqs are taken). */
  const fresh: { message: AppendRequest['messages'][number]; result: AppendResult }[] = [];
  const seenKeys = new Map<string, AppendResult>();
  let freshBytes = 0;
  for (const message of request.messages) {
    if (message.idempotencyKey !== null) {
      const found = earlier.get(message.idempotencyKey);
      const seen = seenKeys.get(message.idempotencyKey);
      if (found !== undefined) {
        results.push(found);
        continue;
      }
      if (seen !== undefined) {
        // Filled in below, with the seq its first occurrence gets.
        const duplicate = { id: seen.id, seq: 0, isDuplicate: true };
        results.push(duplicate);
        fresh.push({ message, result: duplicate });
        continue;
      }
    }
    const result = { id: message.id, seq: 0, isDuplicate: false };
    if (message.idempotencyKey !== null) seenKeys.set(message.idempotencyKey, result);
    fresh.push({ message, result });
    freshBytes += message.payload.length;
    results.push(result);
  }
  const toInsert = fresh.filter((f) => !f.result.isDuplicate);
  // A retry whose every message was taken before the agent ended gets its earlier answer: it sends nothing new.
  if (toInsert.length === 0) return results;
  // Checked in the transaction that appends, under the agent's row lock, so a stop committed just before cannot let mail in after it.
  if (ENDED_AGENT_STATES.includes(agent.state)) {
    throw new FailedPreconditionError(`agent ${request.agentId} is ${agent.state}: its outbox takes no new messages (ensure the agent again to send to it)`);
  }
  if (agent.outbox_count + toInsert.length > request.maxPending) {
    throw new ResourceExhaustedError(
      `the outbox of ${request.agentId} is full (${agent.outbox_count} unacknowledged or dead-lettered messages, at most ${request.maxPending}; ` +
        'dead letters go with `control-plane messages purge|requeue`)',
    );
  }
  if (agent.outbox_bytes + freshBytes > request.maxPendingBytes) {
    throw new ResourceExhaustedError(
      `the outbox of ${request.agentId} is full (${agent.outbox_bytes} bytes of unacknowledged or dead-lettered payloads; ` +
        `these ${freshBytes} more would pass the limit of ${request.maxPendingBytes}; dead letters go with \`control-plane messages purge|requeue\`)`,
    );
  }
  // The seqs: taken by this UPDATE, so they belong to this transaction and exist only if it commits (gapless, in commit order).
  const lastSeq = (
    await client.query<{ last_seq: number }>('UPDATE agents SET last_seq = last_seq + $1 WHERE agent_id = $2 RETURNING last_seq', [toInsert.length, request.agentId])
  ).rows[0]?.last_seq;
  if (lastSeq === undefined) throw new NotFoundError(`no agent ${request.agentId}`);
  let seq = lastSeq - toInsert.length;
  for (const entry of toInsert) entry.result.seq = ++seq;
  for (const entry of fresh) {
    if (entry.result.isDuplicate) entry.result.seq = seenKeys.get(entry.message.idempotencyKey ?? '')?.seq ?? 0;
  }
  const params = new Params();
  const from = senderName(request.sender);
  const rows = toInsert.map(
    ({ message, result }) =>
      `(${[request.agentId, result.seq, message.id, from, principal, message.contentType, message.payload, message.createdAtMs, message.idempotencyKey]
        .map((value) => params.add(value))
        .join(', ')}, 'pending', 0, '')`,
  );
  // The trigger on messages adds the payloads to outbox_bytes and the messages to outbox_count.
  await client.query(
    `INSERT INTO messages (agent_id, seq, id, sender, sender_principal, content_type, payload, created_at_ms, idempotency_key, state, attempts, last_error)
     VALUES ${rows.join(', ')}`,
    params.values,
  );
  return results;
}
