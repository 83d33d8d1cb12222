import { randomUUID } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { AlreadyExistsError, ClosedError, FailedPreconditionError, NotFoundError, ResourceExhaustedError } from '../../common/errors.js';
import type { AdminTokenRecord, AdminTokenStore } from './admin-token-store.js';
import type { AuditQuery, AuditRecord, AuditStore } from './audit-store.js';
import { migrate } from './sqlite-schema.js';
import type { EventFilter, EventIdRange, EventRecord, EventStore, NewEventRecord } from './event-store.js';
import { ENDED_AGENT_STATES, LIVE_AGENT_STATES, MAX_TRANSITIONS_PER_AGENT, senderName, senderPrincipal } from './store.js';
import type {
  AgentCredentialState,
  AgentExpectation,
  AgentMoveRecord,
  AgentTransitionRecord,
  AgentPatch,
  AgentRecord,
  AgentStateName,
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
import { AGENT_COLUMNS, HOST_COLUMNS } from './patch-columns.js';
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

/** Longest reason kept in a transition (a host's detail can be long). */
const MAX_REASON_CHARS = 1024;

/** Thrown inside a key transition whose condition does not hold, to roll it back. */
class TransitionRefused extends Error {}

/** A taken kid, or a second signer or standby of a purpose (the partial unique indexes). */
function isKeyConstraintViolation(err: unknown): boolean {
  const code = err instanceof Error && 'code' in err ? (err as { code: unknown }).code : undefined;
  return code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE';
}

/** Encodes a patch value for its column: JSON for structured fields, 1/0 for booleans, as-is otherwise. */
function columnValue(value: unknown): unknown {
  if (typeof value === 'boolean') return value ? 1 : 0;
  return typeof value === 'object' && value !== null ? JSON.stringify(value) : value;
}

/** The store file in a control plane's data directory. */
export function databasePath(dataDir: string): string {
  return join(dataDir, 'tether.db');
}

/** Prepared statements kept per store. */
const MAX_CACHED_STATEMENTS = 256;

/**
 * Writes committed together at most: one commit (one fsync under FULL) for up
 * to this many, and a bound on how long one flush holds the event loop. What is
 * left waits for the next flush, one turn later.
 */
const MAX_WRITES_PER_COMMIT = 512;

/** Transactions one flush may try when writes make SQLite give up the whole transaction (a full disk). */
const MAX_COMMIT_PASSES = 3;

/** Options of {@link SqliteStore.open}; the defaults are what a control plane runs with. */
export interface SqliteStoreOptions {
  /**
   * @internal For benchmarks only (BENCH_STORE_MODE, scripts/bench/tether-fixture.ts): `normal` is the store as it was
   * before FULL (an answered write can vanish on power loss).
   */
  synchronous?: 'full' | 'normal';
  /**
   * @internal For benchmarks only (BENCH_STORE_MODE): false commits each write on its
   * own at once (one fsync each), as the store did before group commit.
   */
  isGroupCommit?: boolean;
}

/** A write waiting for the next group commit. */
interface QueuedWrite {
  body: () => unknown;
  /**
   * The body runs one SQL statement: SQLite undoes a failing statement on its own,
   * so it needs no savepoint of its own (a SAVEPOINT and a RELEASE per write were
   * about a fifth of a rotation storm's commit time).
   */
  isOneStatement: boolean;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

/**
 * What a store failure becomes at the store's edge: a full disk (or a database
 * at its size limit) is ResourceExhaustedError, so callers answer
 * RESOURCE_EXHAUSTED instead of INTERNAL; anything else is left as it is.
 */
function storeError(err: unknown): Error {
  if (err instanceof Error && 'code' in err && (err as { code: unknown }).code === 'SQLITE_FULL') {
    return new ResourceExhaustedError('the store is full (disk or database size limit); nothing was written', { cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * The embedded default {@link Store}: one SQLite file in WAL mode with
 * `synchronous = FULL`, so a write whose Promise has resolved survives power
 * loss (NORMAL can lose the last commits: an answered send, or a host-credential
 * rotation the host has already stored, leaving it a generation ahead of the store).
 *
 * Group commit: FULL makes every commit an fsync (milliseconds on a real disk),
 * and better-sqlite3 is synchronous, so each one blocks the event loop. Writes
 * are therefore queued, and one flush at the next turn of the event loop runs
 * every queued write (up to MAX_WRITES_PER_COMMIT) in one transaction, each in
 * its own savepoint (or, a write of one statement, in that statement, which
 * SQLite undoes alone): one write's error rolls back and rejects only that write,
 * and every Promise settles only after the commit, so a caller that awaited its
 * write reads it back. Writes run in the order they were made, at flush time,
 * so a conditional update is decided against every write queued before it.
 * Reads run at once (WAL: they see what is committed). No transaction spans an `await`.
 */
export class SqliteStore implements Store, AdminTokenStore, AuditStore, EventStore {
  readonly #db: Database.Database;
  readonly #statements = new Map<string, Database.Statement>();
  readonly #isGroupCommit: boolean;
  #queue: QueuedWrite[] = [];
  #isFlushScheduled = false;
  #isClosed = false;

  private constructor(db: Database.Database, isGroupCommit: boolean) {
    this.#db = db;
    this.#isGroupCommit = isGroupCommit;
  }

  /**
   * Opens (creating if needed) the database at `path`, `:memory:` for a
   * throwaway one, and migrates it to this binary's schema; a store with a
   * newer schema is refused with SchemaTooNewError.
   */
  static open(path: string, options: SqliteStoreOptions = {}): SqliteStore {
    if (path !== ':memory:') {
      // Created 0600 from the start: it holds the private signing keys.
      try {
        closeSync(openSync(path, 'wx', 0o600));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
    const db = new Database(path);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma(options.synchronous === 'normal' ? 'synchronous = NORMAL' : 'synchronous = FULL');
      db.pragma('busy_timeout = 5000');
      db.pragma('foreign_keys = ON');
      migrate(db);
      db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)").run(randomUUID());
    } catch (err) {
      db.close();
      throw err;
    }
    return new SqliteStore(db, options.isGroupCommit ?? true);
  }

  /**
   * @internal For tests: runs a PRAGMA on the store's own connection (e.g. reads
   * `synchronous`, or sets `max_page_count` to make the next growing write fail
   * with a real SQLITE_FULL) and returns its rows.
   */
  pragma(source: string): unknown[] {
    return this.#open().pragma(source) as unknown[];
  }

  #open(): Database.Database {
    if (this.#isClosed) throw new ClosedError('store');
    return this.#db;
  }

  /** `sql` compiled once and kept (the hot paths run the same few statements over and over). */
  #prepare(sql: string): Database.Statement {
    const db = this.#open();
    let statement = this.#statements.get(sql);
    if (statement === undefined) {
      // The dynamic UPDATEs have a handful of shapes; the bound only guards against a surprise.
      if (this.#statements.size >= MAX_CACHED_STATEMENTS) this.#statements.clear();
      statement = db.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  epoch(): Promise<string> {
    return this.#run(() => {
      const row = this.#prepare("SELECT value FROM meta WHERE key = 'epoch'").get() as { value: string };
      return row.value;
    });
  }

  listSigningKeys(): Promise<SigningKeyRecord[]> {
    return this.#run(() =>
      (this.#prepare('SELECT * FROM signing_keys ORDER BY created_at_ms, kid').all() as KeyRow[]).map(keyFromRow),
    );
  }

  insertSigningKey(key: SigningKeyRecord): Promise<void> {
    return this.#write(() => {
      try {
        this.#prepare(
          `INSERT INTO signing_keys (kid, purpose, state, private_jwk, public_jwk, created_at_ms, signing_since_ms, retired_at_ms, verify_until_ms)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(key.kid, key.purpose, key.state, key.privateJwk, key.publicJwk, key.createdAtMs, key.signingSinceMs, key.retiredAtMs, key.verifyUntilMs);
      } catch (err) {
        if (isKeyConstraintViolation(err)) throw new AlreadyExistsError(`signing key ${key.kid} or another ${key.state} key of ${key.purpose} exists`, { cause: err });
        throw err;
      }
    });
  }

  transitionSigningKeys(transitions: readonly SigningKeyTransition[]): Promise<boolean> {
    return this.#write(() => {
      const db = this.#open();
      const toSigning = this.#prepare("UPDATE signing_keys SET state = 'signing', signing_since_ms = ? WHERE kid = ? AND state = ?");
      const toStandby = this.#prepare("UPDATE signing_keys SET state = 'standby' WHERE kid = ? AND state = ?");
      // A key that stops signing loses its private half in the same statement: it is never in a backup after this.
      const toRetired = this.#prepare(
        'UPDATE signing_keys SET state = ?, private_jwk = NULL, retired_at_ms = COALESCE(retired_at_ms, ?), verify_until_ms = ? WHERE kid = ? AND state = ?',
      );
      const apply = db.transaction((steps: readonly SigningKeyTransition[]): boolean => {
        for (const step of steps) {
          let changes: number;
          if (step.to === 'signing') changes = toSigning.run(step.atMs, step.kid, step.from).changes;
          else if (step.to === 'standby') changes = toStandby.run(step.kid, step.from).changes;
          else changes = toRetired.run(step.to, step.atMs, step.verifyUntilMs ?? null, step.kid, step.from).changes;
          // Throwing rolls back every step already applied.
          if (changes !== 1) throw new TransitionRefused();
        }
        return true;
      });
      try {
        return apply(transitions);
      } catch (err) {
        if (err instanceof TransitionRefused || isKeyConstraintViolation(err)) return false;
        throw err;
      }
    });
  }

  fixSigningKeyVerifyUntil(verifyUntilMs: number): Promise<number> {
    return this.#write(
      () =>
        this.#prepare("UPDATE signing_keys SET verify_until_ms = ? WHERE state IN ('verifying-only', 'revoked') AND verify_until_ms IS NULL").run(verifyUntilMs)
          .changes,
    );
  }

  deleteExpiredSigningKeys(nowMs: number): Promise<string[]> {
    return this.#write(() => {
      const rows = this.#prepare(
        "DELETE FROM signing_keys WHERE state IN ('verifying-only', 'revoked') AND verify_until_ms IS NOT NULL AND verify_until_ms <= ? RETURNING kid",
      ).all(nowMs) as { kid: string }[];
      return rows.map((row) => row.kid);
    });
  }

  markAgentRotationsDue(issuedFromMs: number, issuedUntilMs: number, dueAtMs: number): Promise<number> {
    return this.#write(() => {
      const live = LIVE_AGENT_STATES.map(() => '?').join(', ');
      return this.#prepare(
        `UPDATE agents SET rotation_due_at_ms = ? WHERE state IN (${live}) AND issued_at_ms >= ? AND issued_at_ms <= ? AND rotation_due_at_ms > ?`,
      ).run(dueAtMs, ...LIVE_AGENT_STATES, issuedFromMs, issuedUntilMs, dueAtMs).changes;
    });
  }

  insertHost(host: HostRecord): Promise<void> {
    return this.#write(() => {
      try {
        this.#prepare(
          `INSERT INTO hosts (host_id, name, state, join_secret_hash, join_expires_at_ms, join_lease_session_id,
             credential_generation, min_valid_generation, credential_issued_at_ms, credential_expires_at_ms, capacity, labels,
             last_seen_ms, created_at_ms, is_schedulable)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(
          host.hostId,
          host.name,
          host.state,
          host.joinSecretHash,
          host.joinExpiresAtMs,
          host.joinLeaseSessionId,
          host.credentialGeneration,
          host.minValidGeneration,
          host.credentialIssuedAtMs,
          host.credentialExpiresAtMs,
          host.capacity,
          JSON.stringify(host.labels),
          host.lastSeenMs,
          host.createdAtMs,
          host.isSchedulable ? 1 : 0,
        );
      } catch (err) {
        if (isUniqueViolation(err)) throw new AlreadyExistsError(`host ${host.hostId} exists`, { cause: err });
        throw err;
      }
    });
  }

  getHost(hostId: string): Promise<HostRecord | undefined> {
    return this.#run(() => this.#getHost(hostId));
  }

  #getHost(hostId: string): HostRecord | undefined {
    const row = this.#prepare('SELECT * FROM hosts WHERE host_id = ?').get(hostId) as HostRow | undefined;
    return row === undefined ? undefined : hostFromRow(row);
  }

  updateHost(hostId: string, patch: HostPatch, expect: HostExpectation = {}): Promise<HostRecord | undefined> {
    return this.#write(() => {
      const current = this.#getHost(hostId);
      if (current === undefined || !hostMeets(current, expect)) return undefined;
      return this.#updateHost(hostId, patch);
    });
  }

  getHostLoads(hostIds: readonly string[]): Promise<Map<string, HostLoad>> {
    return this.#run(() => {
      const select = this.#prepare('SELECT host_id, state, capacity, load, is_schedulable FROM hosts WHERE host_id = ?');
      const loads = new Map<string, HostLoad>();
      for (const hostId of hostIds) {
        const row = select.get(hostId) as { host_id: string; state: string; capacity: number; load: number; is_schedulable: number } | undefined;
        if (row !== undefined) {
          loads.set(row.host_id, {
            hostId: row.host_id,
            state: row.state as HostStateName,
            capacity: row.capacity,
            load: row.load,
            isSchedulable: row.is_schedulable !== 0,
          });
        }
      }
      return loads;
    });
  }

  #updateHost(hostId: string, patch: HostPatch): HostRecord | undefined {
    const entries = Object.entries(patch).filter(([, value]) => value !== undefined) as [keyof HostPatch, unknown][];
    if (entries.length > 0) {
      const sets = entries.map(([key]) => `${HOST_COLUMNS[key]} = ?`).join(', ');
      this.#prepare(`UPDATE hosts SET ${sets} WHERE host_id = ?`).run(...entries.map(([, value]) => columnValue(value)), hostId);
    }
    return this.#getHost(hostId);
  }

  listHosts(afterId: string | null, limit: number): Promise<Page<HostRecord>> {
    return this.#run(() => {
      const rows = this.#prepare('SELECT * FROM hosts WHERE host_id > ? ORDER BY host_id LIMIT ?').all(afterId ?? '', limit + 1) as HostRow[];
      return page(rows.map(hostFromRow), limit, (host) => host.hostId);
    });
  }

  leaseJoinToken(
    hostId: string,
    sessionId: string,
    nowMs: number,
    isLeaseLive: (sessionId: string) => boolean,
  ): Promise<HostRecord | undefined> {
    return this.#write(() =>
      this.#open().transaction(() => {
        const host = this.#getHost(hostId);
        if (host === undefined || host.state === 'revoked' || host.joinSecretHash === null) return undefined;
        if (nowMs >= host.joinExpiresAtMs) return undefined;
        if (host.joinLeaseSessionId !== null && isLeaseLive(host.joinLeaseSessionId)) return undefined;
        return this.#updateHost(hostId, { joinLeaseSessionId: sessionId });
      })(),
    );
  }

  insertAgent(agent: AgentRecord, reason = ''): Promise<void> {
    return this.#write(() => {
      try {
        this.#prepare(
          `INSERT INTO agents (agent_id, name, state, host_id, host_labels, spec, incarnation, generation, token_id,
             issued_at_ms, expires_at_ms, rotation_due_at_ms, created_at_ms, updated_at_ms, detail, last_seq, acked_seq,
             previous_expires_at_ms, acked_generation, acked_expires_at_ms, requested_host_id, restarts, last_error, last_error_at_ms, is_ensured,
             restart_policy, failures, restart_at_ms, running_since_ms)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(
          agent.agentId,
          agent.name,
          agent.state,
          agent.hostId,
          JSON.stringify(agent.hostLabels),
          JSON.stringify(agent.spec),
          agent.incarnation,
          agent.generation,
          agent.tokenId,
          agent.issuedAtMs,
          agent.expiresAtMs,
          agent.rotationDueAtMs,
          agent.createdAtMs,
          agent.updatedAtMs,
          agent.detail,
          agent.lastSeq,
          agent.ackedSeq,
          agent.previousExpiresAtMs,
          agent.ackedGeneration,
          agent.ackedExpiresAtMs,
          agent.requestedHostId,
          agent.restarts,
          agent.lastError,
          agent.lastErrorAtMs,
          agent.isEnsured ? 1 : 0,
          agent.restartPolicy,
          agent.failures,
          agent.restartAtMs,
          agent.runningSinceMs,
        );
      } catch (err) {
        if (isUniqueViolation(err)) throw new AlreadyExistsError(`agent ${agent.agentId} exists`, { cause: err });
        throw err;
      }
      this.#recordTransition(agent.agentId, agent.createdAtMs, null, agent, reason);
    });
  }

  listAgentTransitions(agentId: string, limit: number): Promise<AgentTransitionRecord[]> {
    return this.#run(() => {
      const rows = this.#prepare('SELECT * FROM agent_state_history WHERE agent_id = ? ORDER BY id DESC LIMIT ?').all(
        agentId,
        Math.max(0, Math.min(limit, MAX_TRANSITIONS_PER_AGENT)),
      ) as TransitionRow[];
      return rows.reverse().map(transitionFromRow);
    });
  }

  /**
   * Appends a transition of `agentId` to `to` and drops what is beyond the
   * bound (the oldest); caller holds a transaction. One indexed range per write.
   */
  #recordTransition(agentId: string, atMs: number, from: AgentStateName | null, to: Pick<AgentRecord, 'state' | 'hostId' | 'incarnation'>, reason: string): void {
    this.#prepare(
      'INSERT INTO agent_state_history (agent_id, at_ms, from_state, to_state, host_id, incarnation, reason) VALUES (?, ?, ?, ?, ?, ?, ?)',
    ).run(agentId, atMs, from, to.state, to.hostId, to.incarnation, reason.slice(0, MAX_REASON_CHARS));
    this.#prepare(
      `DELETE FROM agent_state_history WHERE agent_id = ? AND id <= (
         SELECT id FROM agent_state_history WHERE agent_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`,
    ).run(agentId, agentId, MAX_TRANSITIONS_PER_AGENT);
  }

  getAgent(agentId: string): Promise<AgentRecord | undefined> {
    return this.#run(() => this.#getAgent(agentId));
  }

  #getAgent(agentId: string): AgentRecord | undefined {
    const row = this.#prepare('SELECT * FROM agents WHERE agent_id = ?').get(agentId) as AgentRow | undefined;
    return row === undefined ? undefined : agentFromRow(row);
  }

  getAgentCredentialState(agentId: string): Promise<AgentCredentialState | undefined> {
    return this.#run(() => {
      const row = this.#prepare(
        `SELECT state, host_id, incarnation, generation, expires_at_ms, previous_expires_at_ms, acked_generation
         FROM agents WHERE agent_id = ?`,
      ).get(agentId) as
        | Pick<AgentRow, 'state' | 'host_id' | 'incarnation' | 'generation' | 'expires_at_ms' | 'previous_expires_at_ms' | 'acked_generation'>
        | undefined;
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
    });
  }

  patchAgent(agentId: string, patch: AgentPatch, expect: AgentExpectation): Promise<boolean> {
    // A change of state, host or incarnation is a transition, which only updateAgent records.
    if (patch.state !== undefined || patch.hostId !== undefined || patch.incarnation !== undefined) {
      return Promise.reject(new Error('patchAgent cannot change an agent\'s state, host or incarnation: use updateAgent'));
    }
    return this.#write(() => {
      const entries = Object.entries(patch).filter(([, value]) => value !== undefined) as [keyof AgentPatch, unknown][];
      // The expectation goes in the WHERE clause: one statement, decided against every write queued before it.
      const where = ['agent_id = ?'];
      const params: unknown[] = [agentId];
      if (expect.incarnation !== undefined) {
        where.push('incarnation = ?');
        params.push(expect.incarnation);
      }
      if (expect.generation !== undefined) {
        where.push('generation = ?');
        params.push(expect.generation);
      }
      if (expect.states !== undefined) {
        where.push(`state IN (${expect.states.map(() => '?').join(', ') || "''"})`);
        params.push(...expect.states);
      }
      // An empty patch still answers whether the agent meets the expectation.
      const sets = entries.length === 0 ? 'agent_id = agent_id' : entries.map(([key]) => `${AGENT_COLUMNS[key]} = ?`).join(', ');
      const result = this.#prepare(`UPDATE agents SET ${sets} WHERE ${where.join(' AND ')}`).run(
        ...entries.map(([, value]) => columnValue(value)),
        ...params,
      );
      return result.changes > 0;
    }, true);
  }

  updateAgent(agentId: string, patch: AgentPatch, expect: AgentExpectation = {}, reason?: string): Promise<AgentRecord | undefined> {
    return this.#write(() =>
      this.#open().transaction(() => {
        const current = this.#getAgent(agentId);
        if (current === undefined || !agentMeets(current, expect)) return undefined;
        return this.#patchAgent(current, patch, reason) ?? current;
      })(),
    );
  }

  /**
   * Writes `patch` to an agent's row and reads it back, recording a transition
   * if its state, host or incarnation changed; caller holds a transaction.
   */
  #patchAgent(current: AgentRecord, patch: AgentPatch, reason: string | undefined): AgentRecord | undefined {
    const agentId = current.agentId;
    const entries = Object.entries(patch).filter(([, value]) => value !== undefined) as [keyof AgentPatch, unknown][];
    if (entries.length > 0) {
      const sets = entries.map(([key]) => `${AGENT_COLUMNS[key]} = ?`).join(', ');
      this.#prepare(`UPDATE agents SET ${sets} WHERE agent_id = ?`).run(...entries.map(([, value]) => columnValue(value)), agentId);
    }
    const updated = this.#getAgent(agentId);
    if (
      updated !== undefined &&
      (updated.state !== current.state || updated.hostId !== current.hostId || updated.incarnation !== current.incarnation)
    ) {
      this.#recordTransition(agentId, updated.updatedAtMs, current.state, updated, reason ?? patch.detail ?? '');
    }
    return updated;
  }

  placeAgent(agentId: string, patch: AgentPatch & { hostId: string }, expect: AgentExpectation, reason?: string): Promise<PlaceAgentResult> {
    return this.#write((): PlaceAgentResult => {
      const current = this.#getAgent(agentId);
      if (current === undefined || !agentMeets(current, expect)) return { outcome: 'agent-changed' };
      const host = this.#prepare('SELECT state, capacity, load, is_schedulable FROM hosts WHERE host_id = ?').get(patch.hostId) as
        | { state: string; capacity: number; load: number; is_schedulable: number }
        | undefined;
      if (host === undefined || host.state === 'revoked') return { outcome: 'host-unavailable' };
      const state = patch.state ?? current.state;
      // Room reserved for a move to this host (agent_moves) counts already: placing it there takes that room.
      const move = this.#prepare('SELECT to_host_id FROM agent_moves WHERE agent_id = ?').get(agentId) as { to_host_id: string } | undefined;
      const isReserved = move?.to_host_id === patch.hostId && LIVE_AGENT_STATES.includes(state);
      const isCounted = (current.hostId === patch.hostId && LIVE_AGENT_STATES.includes(current.state)) || isReserved;
      // A cordoned host keeps what it runs (an agent restarted in place is counted there already) but takes nothing new.
      if (LIVE_AGENT_STATES.includes(state) && !isCounted && host.is_schedulable === 0) return { outcome: 'host-unavailable' };
      // The triggers on agents add this agent to the host's load as the row is written, inside this transaction.
      if (LIVE_AGENT_STATES.includes(state) && !isCounted && host.capacity > 0 && host.load >= host.capacity) return { outcome: 'host-full' };
      const placed = this.#patchAgent(current, patch, reason) ?? current;
      // The reservation became the agent's place (its trigger gives back the room the agent now holds).
      if (isReserved) this.#prepare('DELETE FROM agent_moves WHERE agent_id = ?').run(agentId);
      return { outcome: 'placed', agent: placed };
    });
  }

  listAgents(
    filter: { hostId?: string; states?: readonly AgentStateName[] },
    afterId: string | null,
    limit: number,
  ): Promise<Page<AgentRecord>> {
    return this.#run(() => {
      const where = ['agent_id > ?'];
      const params: unknown[] = [afterId ?? ''];
      if (filter.hostId !== undefined) {
        where.push('host_id = ?');
        params.push(filter.hostId);
      }
      if (filter.states !== undefined) {
        where.push(`state IN (${filter.states.map(() => '?').join(', ') || "''"})`);
        params.push(...filter.states);
      }
      const rows = this.#prepare(`SELECT * FROM agents WHERE ${where.join(' AND ')} ORDER BY agent_id LIMIT ?`).all(...params, limit + 1) as AgentRow[];
      return page(rows.map(agentFromRow), limit, (agent) => agent.agentId);
    });
  }

  countAgentsByHost(states: readonly AgentStateName[]): Promise<Map<string, number>> {
    return this.#run(() => {
      const rows = this.#prepare(
        `SELECT host_id, COUNT(*) AS n FROM agents WHERE host_id IS NOT NULL AND state IN (${states.map(() => '?').join(', ') || "''"}) GROUP BY host_id`,
      ).all(...states) as { host_id: string; n: number }[];
      return new Map(rows.map((row) => [row.host_id, row.n]));
    });
  }

  countAgentsByState(): Promise<Map<AgentStateName, number>> {
    return this.#run(() => {
      const rows = this.#prepare('SELECT state, COUNT(*) AS n FROM agents GROUP BY state').all() as { state: AgentStateName; n: number }[];
      return new Map(rows.map((row) => [row.state, row.n]));
    });
  }

  countPendingMessages(): Promise<number> {
    return this.#run(
      () => (this.#prepare("SELECT COUNT(*) AS n FROM messages WHERE state = 'pending'").get() as { n: number }).n,
    );
  }

  countOutboxBytes(): Promise<number> {
    // One row per agent (kept by the triggers on messages), not a scan of the payloads.
    return this.#run(() => (this.#prepare('SELECT COALESCE(SUM(outbox_bytes), 0) AS n FROM agents').get() as { n: number }).n);
  }

  applyOutboxBatch(batch: OutboxBatch): Promise<(AppendResult[] | Error)[]> {
    return this.#write(() =>
      this.#open().transaction(() => {
        const results = batch.appends.map((request) => {
          // A savepoint per request, so one refused append leaves the others in the batch.
          try {
            return this.#open().transaction(() => this.#append(request))();
          } catch (err) {
            if (err instanceof NotFoundError || err instanceof FailedPreconditionError || err instanceof ResourceExhaustedError) return err;
            throw err;
          }
        });
        const ack = this.#prepare(
          "UPDATE messages SET state = 'acked', payload = x'' WHERE agent_id = ? AND state = 'pending' AND seq <= ?",
        );
        const watermark = this.#prepare('UPDATE agents SET acked_seq = MAX(acked_seq, ?) WHERE agent_id = ?');
        for (const { agentId, seq } of batch.acks) {
          ack.run(agentId, seq);
          watermark.run(seq, agentId);
        }
        return results;
      })(),
    );
  }

  #append(request: AppendRequest): AppendResult[] {
    const agent = this.#prepare('SELECT state, last_seq, outbox_bytes, outbox_count FROM agents WHERE agent_id = ?').get(request.agentId) as
      | { state: AgentStateName; last_seq: number; outbox_bytes: number; outbox_count: number }
      | undefined;
    if (agent === undefined) throw new NotFoundError(`no agent ${request.agentId}`);
    const principal = senderPrincipal(request.sender);
    const findByKey = this.#prepare('SELECT id, seq FROM messages WHERE agent_id = ? AND sender_principal = ? AND idempotency_key = ?');
    const results: AppendResult[] = [];
    const fresh: { message: AppendRequest['messages'][number]; seq: number }[] = [];
    let lastSeq = agent.last_seq;
    let freshBytes = 0;
    const seenKeys = new Map<string, AppendResult>();
    for (const message of request.messages) {
      if (message.idempotencyKey !== null) {
        const earlier =
          (findByKey.get(request.agentId, principal, message.idempotencyKey) as { id: string; seq: number } | undefined) ??
          seenKeys.get(message.idempotencyKey);
        if (earlier !== undefined) {
          results.push({ id: earlier.id, seq: earlier.seq, isDuplicate: true });
          continue;
        }
      }
      lastSeq++;
      const result = { id: message.id, seq: lastSeq, isDuplicate: false };
      if (message.idempotencyKey !== null) seenKeys.set(message.idempotencyKey, result);
      fresh.push({ message, seq: lastSeq });
      freshBytes += message.payload.length;
      results.push(result);
    }
    // A retry whose every message was taken before the agent ended gets its earlier answer: it sends nothing new.
    if (fresh.length === 0) return results;
    // Checked in the transaction that appends, so a stop committed just before cannot let mail in after it.
    if (ENDED_AGENT_STATES.includes(agent.state)) {
      throw new FailedPreconditionError(
        `agent ${request.agentId} is ${agent.state}: its outbox takes no new messages (ensure the agent again to send to it)`,
      );
    }
    // Dead letters count too: an agent that refuses everything must not let them pile up without bound.
    // Kept by triggers (migration 8), so no COUNT per append.
    const held = agent.outbox_count;
    if (held + fresh.length > request.maxPending) {
      throw new ResourceExhaustedError(
        `the outbox of ${request.agentId} is full (${held} unacknowledged or dead-lettered messages, at most ${request.maxPending}; ` +
          'dead letters go with `control-plane messages purge|requeue`)',
      );
    }
    if (agent.outbox_bytes + freshBytes > request.maxPendingBytes) {
      throw new ResourceExhaustedError(
        `the outbox of ${request.agentId} is full (${agent.outbox_bytes} bytes of unacknowledged or dead-lettered payloads; ` +
          `these ${freshBytes} more would pass the limit of ${request.maxPendingBytes}; dead letters go with \`control-plane messages purge|requeue\`)`,
      );
    }
    const insert = this.#prepare(
      `INSERT INTO messages (agent_id, seq, id, sender, sender_principal, content_type, payload, created_at_ms, state, attempts, last_error, idempotency_key)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, '', ?)`,
    );
    const from = senderName(request.sender);
    for (const { message, seq } of fresh) {
      insert.run(request.agentId, seq, message.id, from, principal, message.contentType, message.payload, message.createdAtMs, message.idempotencyKey);
    }
    // The triggers on messages have added the payloads to outbox_bytes and the messages to outbox_count.
    this.#prepare('UPDATE agents SET last_seq = ? WHERE agent_id = ?').run(lastSeq, request.agentId);
    return results;
  }

  listDeliverable(agentId: string, afterSeq: number, limit: number): Promise<MessageRecord[]> {
    return this.#run(() =>
      (
        this.#prepare("SELECT * FROM messages WHERE agent_id = ? AND seq > ? AND state IN ('pending', 'dead') ORDER BY seq LIMIT ?")
          .all(agentId, afterSeq, limit) as MessageRow[]
      ).map(messageFromRow),
    );
  }

  recordRefusal(agentId: string, seq: number, error: string, maxAttempts: number): Promise<MessageRecord | undefined> {
    return this.#write(() =>
      this.#open().transaction(() => {
        const row = this.#prepare("SELECT * FROM messages WHERE agent_id = ? AND seq = ? AND state = 'pending'").get(agentId, seq) as
          | MessageRow
          | undefined;
        if (row === undefined) return undefined;
        const attempts = row.attempts + 1;
        const state = attempts >= maxAttempts ? 'dead' : 'pending';
        this.#prepare('UPDATE messages SET attempts = ?, last_error = ?, state = ? WHERE agent_id = ? AND seq = ?').run(
          attempts,
          error.slice(0, 1024),
          state,
          agentId,
          seq,
        );
        return messageFromRow({ ...row, attempts, last_error: error.slice(0, 1024), state });
      })(),
    );
  }

  listMessages(agentId: string, states: readonly MessageStateName[], afterSeq: number, limit: number): Promise<MessageRecord[]> {
    return this.#run(() =>
      (
        this.#prepare(
          `SELECT * FROM messages WHERE agent_id = ? AND seq > ? AND state IN (${states.map(() => '?').join(', ') || "''"}) ORDER BY seq LIMIT ?`,
        ).all(agentId, afterSeq, ...states, limit) as MessageRow[]
      ).map(messageFromRow),
    );
  }

  requeueMessage(agentId: string, seq: number): Promise<number> {
    return this.#write(() =>
      this.#open().transaction(() => {
        const row = this.#prepare("SELECT * FROM messages WHERE agent_id = ? AND seq = ? AND state = 'dead'").get(agentId, seq) as
          | MessageRow
          | undefined;
        if (row === undefined) throw new NotFoundError(`no dead letter ${agentId}/${seq}`);
        const agent = this.#prepare('SELECT last_seq FROM agents WHERE agent_id = ?').get(agentId) as { last_seq: number };
        const newSeq = agent.last_seq + 1;
        // The idempotency key stays with the original row, which keeps answering retried sends.
        this.#prepare("UPDATE messages SET state = 'requeued', payload = x'' WHERE agent_id = ? AND seq = ?").run(agentId, seq);
        this.#prepare(
          `INSERT INTO messages (agent_id, seq, id, sender, sender_principal, content_type, payload, created_at_ms, state, attempts, last_error, idempotency_key)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, '', NULL)`,
        ).run(agentId, newSeq, row.id, row.sender, row.sender_principal, row.content_type, row.payload, row.created_at_ms);
        this.#prepare('UPDATE agents SET last_seq = ? WHERE agent_id = ?').run(newSeq, agentId);
        return newSeq;
      })(),
    );
  }

  purgeMessage(agentId: string, seq: number): Promise<void> {
    return this.#write(() => {
      const result = this.#prepare("DELETE FROM messages WHERE agent_id = ? AND seq = ? AND state = 'dead'").run(agentId, seq);
      if (result.changes === 0) throw new NotFoundError(`no dead letter ${agentId}/${seq}`);
    });
  }

  pruneMessages(ackedBeforeMs: number, endedBeforeMs: number): Promise<number> {
    return this.#write(() =>
      this.#open().transaction(() => {
        const acked = this.#prepare("DELETE FROM messages WHERE state IN ('acked', 'requeued') AND created_at_ms < ?").run(ackedBeforeMs).changes;
        const ended = ENDED_AGENT_STATES.map(() => '?').join(', ');
        const gone = this.#prepare(
          `DELETE FROM messages WHERE agent_id IN (SELECT agent_id FROM agents WHERE state IN (${ended}) AND updated_at_ms < ?)`,
        ).run(...ENDED_AGENT_STATES, endedBeforeMs).changes;
        return acked + gone;
      })(),
    );
  }

  setHostDrain(hostId: string, state: HostDrainState | null, nowMs: number): Promise<HostDrainRecord | undefined> {
    return this.#write(() => {
      if (this.#getHost(hostId) === undefined) throw new NotFoundError(`no host ${hostId}`);
      const before = this.#getHostDrain(hostId);
      if (state === null) {
        this.#prepare('DELETE FROM host_drains WHERE host_id = ?').run(hostId);
        this.#prepare('UPDATE hosts SET is_schedulable = 1 WHERE host_id = ?').run(hostId);
      } else {
        this.#prepare(
          `INSERT INTO host_drains (host_id, state, started_at_ms, updated_at_ms) VALUES (?, ?, ?, ?)
           ON CONFLICT (host_id) DO UPDATE SET state = excluded.state, updated_at_ms = excluded.updated_at_ms`,
        ).run(hostId, state, nowMs, nowMs);
        this.#prepare('UPDATE hosts SET is_schedulable = 0 WHERE host_id = ?').run(hostId);
      }
      return before;
    });
  }

  getHostDrain(hostId: string): Promise<HostDrainRecord | undefined> {
    return this.#run(() => this.#getHostDrain(hostId));
  }

  #getHostDrain(hostId: string): HostDrainRecord | undefined {
    const row = this.#prepare('SELECT host_id, state, started_at_ms, updated_at_ms FROM host_drains WHERE host_id = ?').get(hostId) as DrainRow | undefined;
    return row === undefined ? undefined : drainFromRow(row);
  }

  listHostDrains(): Promise<HostDrainRecord[]> {
    return this.#run(() =>
      (this.#prepare('SELECT host_id, state, started_at_ms, updated_at_ms FROM host_drains ORDER BY host_id').all() as DrainRow[]).map(drainFromRow),
    );
  }

  reserveMove(agentId: string, fromHostId: string, toHostId: string, incarnation: number, nowMs: number): Promise<ReserveMoveResult> {
    return this.#write((): ReserveMoveResult => {
      const agent = this.#getAgent(agentId);
      if (agent?.hostId !== fromHostId || agent.incarnation !== incarnation || !LIVE_AGENT_STATES.includes(agent.state)) return 'agent-changed';
      if (this.#prepare('SELECT 1 FROM agent_moves WHERE agent_id = ?').get(agentId) !== undefined) return 'agent-changed';
      const host = this.#prepare('SELECT state, capacity, load, is_schedulable FROM hosts WHERE host_id = ?').get(toHostId) as
        | { state: string; capacity: number; load: number; is_schedulable: number }
        | undefined;
      if (host === undefined || host.state === 'revoked' || host.is_schedulable === 0) return 'host-unavailable';
      if (host.capacity > 0 && host.load >= host.capacity) return 'host-full';
      this.#prepare('INSERT INTO agent_moves (agent_id, from_host_id, to_host_id, incarnation, reserved_at_ms) VALUES (?, ?, ?, ?, ?)').run(
        agentId,
        fromHostId,
        toHostId,
        incarnation,
        nowMs,
      );
      return 'reserved';
    });
  }

  getMove(agentId: string): Promise<AgentMoveRecord | undefined> {
    return this.#run(() => {
      const row = this.#prepare('SELECT * FROM agent_moves WHERE agent_id = ?').get(agentId) as MoveRow | undefined;
      return row === undefined ? undefined : moveFromRow(row);
    });
  }

  listMoves(): Promise<AgentMoveRecord[]> {
    return this.#run(() => (this.#prepare('SELECT * FROM agent_moves ORDER BY agent_id').all() as MoveRow[]).map(moveFromRow));
  }

  releaseMove(agentId: string): Promise<void> {
    return this.#write(() => {
      this.#prepare('DELETE FROM agent_moves WHERE agent_id = ?').run(agentId);
    });
  }

  insertAdminToken(token: AdminTokenRecord): Promise<void> {
    return this.#write(() => {
      try {
        this.#prepare(
          'INSERT INTO admin_tokens (token_id, name, role, secret_hash, created_at_ms, created_by, retired_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)',
        ).run(token.tokenId, token.name, token.role, token.secretHash, token.createdAtMs, token.createdBy, token.retiredAtMs);
      } catch (err) {
        if (isUniqueViolation(err)) throw new AlreadyExistsError(`admin token ${token.tokenId} exists`);
        throw err;
      }
    });
  }

  getAdminToken(tokenId: string): Promise<AdminTokenRecord | undefined> {
    return this.#run(() => this.#getAdminToken(tokenId));
  }

  #getAdminToken(tokenId: string): AdminTokenRecord | undefined {
    const row = this.#prepare('SELECT * FROM admin_tokens WHERE token_id = ?').get(tokenId) as AdminTokenRow | undefined;
    return row === undefined ? undefined : adminTokenFromRow(row);
  }

  listAdminTokens(afterId: string | null, limit: number): Promise<AdminTokenRecord[]> {
    return this.#run(() =>
      (this.#prepare('SELECT * FROM admin_tokens WHERE token_id > ? ORDER BY token_id LIMIT ?').all(afterId ?? '', limit) as AdminTokenRow[]).map(adminTokenFromRow),
    );
  }

  retireAdminToken(tokenId: string, nowMs: number): Promise<AdminTokenRecord | undefined> {
    return this.#write(() => {
      this.#prepare('UPDATE admin_tokens SET retired_at_ms = ? WHERE token_id = ? AND retired_at_ms IS NULL').run(nowMs, tokenId);
      return this.#getAdminToken(tokenId);
    });
  }

  appendAudit(record: Omit<AuditRecord, 'id'>): Promise<number> {
    return this.#write(() =>
      Number(
        this.#prepare('INSERT INTO audit_records (at_ms, token_id, method, targets, code) VALUES (?, ?, ?, ?, ?)').run(
          record.atMs,
          record.tokenId,
          record.method,
          JSON.stringify(record.targets),
          record.code,
        ).lastInsertRowid,
      ),
    );
  }

  listAudit(query: AuditQuery): Promise<AuditRecord[]> {
    return this.#run(() => {
      const rows = this.#prepare(
        `SELECT * FROM audit_records WHERE id > ? AND at_ms >= ? ${query.tokenId === undefined ? '' : 'AND token_id = ?'} ORDER BY id LIMIT ?`,
      ).all(query.afterId, query.sinceMs ?? 0, ...(query.tokenId === undefined ? [] : [query.tokenId]), query.limit) as AuditRow[];
      return rows.map(auditFromRow);
    });
  }

  pruneAudit(beforeMs: number, maxRecords: number): Promise<number> {
    return this.#write(() => {
      const old = this.#prepare('DELETE FROM audit_records WHERE at_ms < ?').run(beforeMs).changes;
      const excess = this.#prepare('DELETE FROM audit_records WHERE id <= (SELECT id FROM audit_records ORDER BY id DESC LIMIT 1 OFFSET ?)').run(maxRecords).changes;
      return old + excess;
    });
  }

  appendEvents(events: readonly NewEventRecord[]): Promise<EventRecord[]> {
    if (events.length === 0) return Promise.resolve([]);
    return this.#write(() => {
      const insert = this.#prepare(
        'INSERT INTO events (at_ms, kind, agent_id, host_id, incarnation, generation, key_id, reason, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      );
      return events.map((e): EventRecord => {
        const { lastInsertRowid } = insert.run(e.atMs, e.kind, e.agentId, e.hostId, e.incarnation, e.generation, e.keyId, e.reason, e.detail);
        return { ...e, id: Number(lastInsertRowid) };
      });
    });
  }

  listEvents(afterId: number, untilId: number, filter: EventFilter, limit: number): Promise<EventRecord[]> {
    return this.#run(() => {
      const where = ['id > ?', 'id <= ?'];
      const params: (string | number)[] = [afterId, untilId];
      if (filter.agentId !== '') {
        where.push('agent_id = ?');
        params.push(filter.agentId);
      }
      if (filter.hostId !== '') {
        where.push('host_id = ?');
        params.push(filter.hostId);
      }
      if (filter.kinds.length > 0) {
        where.push(`kind IN (${filter.kinds.map(() => '?').join(', ')})`);
        params.push(...filter.kinds);
      }
      const sql = `SELECT * FROM events WHERE ${where.join(' AND ')} ORDER BY id LIMIT ?`;
      return (this.#prepare(sql).all(...params, limit) as EventRow[]).map(eventFromRow);
    });
  }

  eventIdRange(): Promise<EventIdRange> {
    return this.#run(() => {
      // AUTOINCREMENT keeps the highest id ever given in sqlite_sequence, whatever was pruned since.
      const last = this.#prepare("SELECT seq FROM sqlite_sequence WHERE name = 'events'").get() as { seq: number } | undefined;
      const first = this.#prepare('SELECT min(id) AS id FROM events').get() as { id: number | null };
      const lastId = last?.seq ?? 0;
      return { firstId: first.id ?? lastId + 1, lastId };
    });
  }

  pruneEvents(beforeMs: number, keepCount: number, maxDeleted: number): Promise<number> {
    return this.#write(() => {
      // The first event to keep by age: a scan from the oldest that stops there (ids follow the clock, near enough).
      const byAge = this.#prepare('SELECT id FROM events WHERE at_ms >= ? ORDER BY id LIMIT 1').get(beforeMs) as { id: number } | undefined;
      const byCount = this.#prepare('SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?').get(Math.max(0, keepCount - 1)) as { id: number } | undefined;
      // Keep from the later of the two bounds; none kept by age (all older) means none.
      const keepFromId = Math.max(byAge?.id ?? Number.MAX_SAFE_INTEGER, keepCount === 0 ? Number.MAX_SAFE_INTEGER : (byCount?.id ?? 0));
      const oldest = this.#prepare('SELECT id FROM events ORDER BY id LIMIT 1 OFFSET ?').get(Math.max(0, maxDeleted)) as { id: number } | undefined;
      const untilId = Math.min(keepFromId, oldest?.id ?? Number.MAX_SAFE_INTEGER);
      return this.#prepare('DELETE FROM events WHERE id < ?').run(untilId).changes;
    });
  }

  close(): Promise<void> {
    if (!this.#isClosed) {
      // Writes already accepted are committed, not dropped.
      while (this.#queue.length > 0) this.#flush();
      this.#isClosed = true;
      this.#db.close();
    }
    return Promise.resolve();
  }

  /** Runs a synchronous read (or an unbatched write) and turns its result or throw into a settled Promise. */
  #run<T>(body: () => T): Promise<T> {
    try {
      return Promise.resolve(body());
    } catch (err) {
      return Promise.reject(storeError(err));
    }
  }

  /** Queues a write for the next group commit; settles once it has committed (or failed). */
  #write<T>(body: () => T, isOneStatement = false): Promise<T> {
    if (this.#isClosed) return Promise.reject(new ClosedError('store'));
    if (!this.#isGroupCommit) return this.#run(() => this.#db.transaction(body)());
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ body, isOneStatement, resolve: resolve as (value: unknown) => void, reject });
      this.#scheduleFlush();
    });
  }

  #scheduleFlush(): void {
    if (this.#isFlushScheduled) return;
    this.#isFlushScheduled = true;
    setImmediate(() => {
      this.#isFlushScheduled = false;
      if (this.#isClosed) return;
      this.#flush();
      if (this.#queue.length > 0) this.#scheduleFlush();
    });
  }

  /** Commits the next queued writes (at most MAX_WRITES_PER_COMMIT) and settles them. Never throws. */
  #flush(): void {
    let writes = this.#queue.splice(0, MAX_WRITES_PER_COMMIT);
    for (let pass = 1; writes.length > 0; pass++) writes = this.#commit(writes, pass < MAX_COMMIT_PASSES);
  }

  /**
   * Runs `writes` in one transaction, each in its own savepoint, and settles
   * those it decided. Some errors (SQLITE_FULL, IOERR) make SQLite roll back the
   * whole transaction, not only the failing statement: that write is rejected
   * and the others are returned to be run again (when `isRetryAllowed`; if not,
   * they fail with the same error), so an in-place update still commits beside
   * an insert a full disk refuses.
   */
  #commit(writes: QueuedWrite[], isRetryAllowed: boolean): QueuedWrite[] {
    const db = this.#db;
    const outcomes: ({ isOk: true; value: unknown } | { isOk: false; error: Error })[] = [];
    let lostAt = -1;
    try {
      db.transaction(() => {
        for (const [i, write] of writes.entries()) {
          try {
            outcomes.push({ isOk: true, value: write.isOneStatement ? write.body() : db.transaction(write.body)() });
          } catch (err) {
            if (!db.inTransaction) {
              lostAt = i;
              throw err;
            }
            outcomes.push({ isOk: false, error: storeError(err) });
          }
        }
      })();
    } catch (err) {
      const error = storeError(err);
      const failed = writes[lostAt];
      if (failed === undefined || !isRetryAllowed) {
        for (const write of writes) write.reject(error);
        return [];
      }
      failed.reject(error);
      return writes.filter((_, i) => i !== lostAt);
    }
    writes.forEach((write, i) => {
      const outcome = outcomes[i];
      if (outcome?.isOk === true) write.resolve(outcome.value);
      else write.reject(outcome?.error ?? new Error('missing write outcome'));
    });
    return [];
  }
}

function agentMeets(agent: AgentRecord, expect: AgentExpectation): boolean {
  if (expect.incarnation !== undefined && agent.incarnation !== expect.incarnation) return false;
  if (expect.generation !== undefined && agent.generation !== expect.generation) return false;
  return expect.states === undefined || expect.states.includes(agent.state);
}

function hostMeets(host: HostRecord, expect: HostExpectation): boolean {
  if (expect.states !== undefined && !expect.states.includes(host.state)) return false;
  if (expect.credentialGeneration !== undefined && host.credentialGeneration !== expect.credentialGeneration) return false;
  if (expect.minValidGeneration !== undefined && host.minValidGeneration !== expect.minValidGeneration) return false;
  return expect.joinLeaseSessionId === undefined || host.joinLeaseSessionId === expect.joinLeaseSessionId;
}

function page<T>(rows: T[], limit: number, idOf: (row: T) => string): Page<T> {
  if (rows.length <= limit) return { items: rows, nextAfterId: null };
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  return { items, nextAfterId: last === undefined ? null : idOf(last) };
}

function isUniqueViolation(err: unknown): boolean {
  return err instanceof Error && 'code' in err && (err as { code: unknown }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}
