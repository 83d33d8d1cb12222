/**
 * Rows of the store's tables and their codecs, one for both engines: the
 * columns are named alike in SQLite and PostgreSQL, and differ only in how a
 * boolean arrives (0/1 or BOOLEAN). Integers arrive as numbers in both (the
 * PostgreSQL pool parses int8; every value is a time in ms, a seq, a count or
 * a generation, well inside 2^53).
 */
import type { AdminRoleName, AdminTokenRecord } from './admin-token-store.js';
import type { AuditRecord, AuditTarget } from './audit-store.js';
import type { EventKind, EventRecord } from './event-store.js';
import type {
  AgentMoveRecord,
  AgentRecord,
  AgentSpecRecord,
  AgentStateName,
  AgentTransitionRecord,
  HostDrainRecord,
  HostDrainState,
  HostRecord,
  LabelRecord,
  MessageRecord,
  MessageStateName,
  RestartPolicyName,
  SigningKeyRecord,
  SigningKeyState,
} from './store.js';

/** A row of `agents` (the counters beside it are the store's own). */
export interface AgentRow {
  agent_id: string;
  name: string;
  state: string;
  host_id: string | null;
  host_labels: string;
  spec: string;
  incarnation: number;
  generation: number;
  token_id: string | null;
  issued_at_ms: number;
  expires_at_ms: number;
  rotation_due_at_ms: number;
  previous_expires_at_ms: number;
  acked_generation: number;
  acked_expires_at_ms: number;
  created_at_ms: number;
  updated_at_ms: number;
  detail: string;
  last_seq: number;
  acked_seq: number;
  requested_host_id: string | null;
  restarts: number;
  last_error: string;
  last_error_at_ms: number;
  /** SQLite: 0 or 1; PostgreSQL: BOOLEAN. */
  is_ensured: number | boolean;
  restart_policy: string;
  failures: number;
  restart_at_ms: number;
  running_since_ms: number;
}

/** A row of `hosts`. */
export interface HostRow {
  host_id: string;
  name: string;
  state: string;
  join_secret_hash: string | null;
  join_expires_at_ms: number;
  join_lease_session_id: string | null;
  credential_generation: number;
  min_valid_generation: number;
  credential_issued_at_ms: number;
  credential_expires_at_ms: number;
  capacity: number;
  labels: string;
  last_seen_ms: number;
  created_at_ms: number;
  /** SQLite: 0 or 1; PostgreSQL: BOOLEAN. */
  is_schedulable: number | boolean;
}

/** A row of `messages`. */
export interface MessageRow {
  agent_id: string;
  seq: number;
  id: string;
  sender: string;
  sender_principal: string;
  content_type: string;
  payload: Buffer;
  created_at_ms: number;
  state: string;
  attempts: number;
  last_error: string;
  idempotency_key: string | null;
}

/** A row of `signing_keys`. */
export interface KeyRow {
  kid: string;
  purpose: string;
  state: string;
  private_jwk: string | null;
  public_jwk: string;
  created_at_ms: number;
  signing_since_ms: number | null;
  retired_at_ms: number | null;
  verify_until_ms: number | null;
}

/** A row of `agent_state_history`. */
export interface TransitionRow {
  agent_id: string;
  at_ms: number;
  from_state: string | null;
  to_state: string;
  host_id: string | null;
  incarnation: number;
  reason: string;
}

/** A row of `host_drains`. */
export interface DrainRow {
  host_id: string;
  state: string;
  started_at_ms: number;
  updated_at_ms: number;
}

/** A row of `agent_moves`. */
export interface MoveRow {
  agent_id: string;
  from_host_id: string;
  to_host_id: string;
  incarnation: number;
  reserved_at_ms: number;
}

/** A row of `admin_tokens`. */
export interface AdminTokenRow {
  token_id: string;
  name: string;
  role: string;
  secret_hash: string;
  created_at_ms: number;
  created_by: string;
  retired_at_ms: number | null;
}

/** A row of `audit_records` (`targets`: the JSON of the list). */
export interface AuditRow {
  id: number;
  at_ms: number;
  token_id: string;
  method: string;
  targets: string;
  code: number;
}

/** A row of `events`. */
export interface EventRow {
  id: number;
  at_ms: number;
  kind: string;
  agent_id: string;
  host_id: string;
  incarnation: number;
  generation: number;
  key_id: string;
  reason: string;
  detail: string;
}

export function agentFromRow(row: AgentRow): AgentRecord {
  return {
    agentId: row.agent_id,
    name: row.name,
    state: row.state as AgentStateName,
    hostId: row.host_id,
    hostLabels: JSON.parse(row.host_labels) as LabelRecord[],
    spec: JSON.parse(row.spec) as AgentSpecRecord,
    incarnation: row.incarnation,
    generation: row.generation,
    tokenId: row.token_id,
    issuedAtMs: row.issued_at_ms,
    expiresAtMs: row.expires_at_ms,
    rotationDueAtMs: row.rotation_due_at_ms,
    previousExpiresAtMs: row.previous_expires_at_ms,
    ackedGeneration: row.acked_generation,
    ackedExpiresAtMs: row.acked_expires_at_ms,
    createdAtMs: row.created_at_ms,
    updatedAtMs: row.updated_at_ms,
    detail: row.detail,
    lastSeq: row.last_seq,
    ackedSeq: row.acked_seq,
    requestedHostId: row.requested_host_id,
    restarts: row.restarts,
    lastError: row.last_error,
    lastErrorAtMs: row.last_error_at_ms,
    isEnsured: Boolean(row.is_ensured),
    restartPolicy: row.restart_policy as RestartPolicyName,
    failures: row.failures,
    restartAtMs: row.restart_at_ms,
    runningSinceMs: row.running_since_ms,
  };
}

export function hostFromRow(row: HostRow): HostRecord {
  return {
    hostId: row.host_id,
    name: row.name,
    state: row.state as HostRecord['state'],
    joinSecretHash: row.join_secret_hash,
    joinExpiresAtMs: row.join_expires_at_ms,
    joinLeaseSessionId: row.join_lease_session_id,
    credentialGeneration: row.credential_generation,
    minValidGeneration: row.min_valid_generation,
    credentialIssuedAtMs: row.credential_issued_at_ms,
    credentialExpiresAtMs: row.credential_expires_at_ms,
    capacity: row.capacity,
    labels: JSON.parse(row.labels) as LabelRecord[],
    lastSeenMs: row.last_seen_ms,
    createdAtMs: row.created_at_ms,
    isSchedulable: Boolean(row.is_schedulable),
  };
}

export function messageFromRow(row: MessageRow): MessageRecord {
  return {
    agentId: row.agent_id,
    seq: row.seq,
    id: row.id,
    from: row.sender,
    contentType: row.content_type,
    payload: row.payload,
    createdAtMs: row.created_at_ms,
    state: row.state as MessageStateName,
    attempts: row.attempts,
    lastError: row.last_error,
    idempotencyKey: row.idempotency_key,
  };
}

export function keyFromRow(row: KeyRow): SigningKeyRecord {
  return {
    kid: row.kid,
    purpose: row.purpose,
    state: row.state as SigningKeyState,
    privateJwk: row.private_jwk,
    publicJwk: row.public_jwk,
    createdAtMs: row.created_at_ms,
    signingSinceMs: row.signing_since_ms,
    retiredAtMs: row.retired_at_ms,
    verifyUntilMs: row.verify_until_ms,
  };
}

export function transitionFromRow(row: TransitionRow): AgentTransitionRecord {
  return {
    agentId: row.agent_id,
    atMs: row.at_ms,
    fromState: row.from_state as AgentStateName | null,
    toState: row.to_state as AgentStateName,
    hostId: row.host_id,
    incarnation: row.incarnation,
    reason: row.reason,
  };
}

export function drainFromRow(row: DrainRow): HostDrainRecord {
  return { hostId: row.host_id, state: row.state as HostDrainState, startedAtMs: row.started_at_ms, updatedAtMs: row.updated_at_ms };
}

export function moveFromRow(row: MoveRow): AgentMoveRecord {
  return { agentId: row.agent_id, fromHostId: row.from_host_id, toHostId: row.to_host_id, incarnation: row.incarnation, reservedAtMs: row.reserved_at_ms };
}

export function adminTokenFromRow(row: AdminTokenRow): AdminTokenRecord {
  return {
    tokenId: row.token_id,
    name: row.name,
    role: row.role as AdminRoleName,
    secretHash: row.secret_hash,
    createdAtMs: row.created_at_ms,
    createdBy: row.created_by,
    retiredAtMs: row.retired_at_ms,
  };
}

export function auditFromRow(row: AuditRow): AuditRecord {
  return { id: row.id, atMs: row.at_ms, tokenId: row.token_id, method: row.method, targets: JSON.parse(row.targets) as AuditTarget[], code: row.code };
}

export function eventFromRow(row: EventRow): EventRecord {
  return {
    id: row.id,
    atMs: row.at_ms,
    kind: row.kind as EventKind,
    agentId: row.agent_id,
    hostId: row.host_id,
    incarnation: row.incarnation,
    generation: row.generation,
    keyId: row.key_id,
    reason: row.reason,
    detail: row.detail,
  };
}
