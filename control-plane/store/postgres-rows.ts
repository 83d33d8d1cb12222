/**
 * Rows of the PostgreSQL store and their codecs: snake_case columns to the
 * records of store.ts. BIGINT columns arrive as numbers (the store's pool
 * parses int8; every value it holds is a millisecond time, a seq, a count or a
 * generation, all well inside 2^53).
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
  is_ensured: boolean;
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
  is_schedulable: boolean;
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

/** Encodes a patch value for its column: JSON text for structured fields, as-is otherwise (booleans are BOOLEAN). */
export function columnValue(value: unknown): unknown {
  return typeof value === 'object' && value !== null ? JSON.stringify(value) : value;
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
    isEnsured: row.is_ensured,
    restartPolicy: row.restart_policy as RestartPolicyName,
    failures: row.failures,
    restartAtMs: row.restart_at_ms,
    runningSinceMs: row.running_since_ms,
  };
}

/** The values of every column of `agents` a record sets, in {@link AGENT_INSERT_COLUMNS} order. */
export function agentValues(agent: AgentRecord): unknown[] {
  return [
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
    agent.isEnsured,
    agent.restartPolicy,
    agent.failures,
    agent.restartAtMs,
    agent.runningSinceMs,
  ];
}

/** The columns {@link agentValues} fills. */
export const AGENT_INSERT_COLUMNS =
  'agent_id, name, state, host_id, host_labels, spec, incarnation, generation, token_id, issued_at_ms, expires_at_ms, rotation_due_at_ms, ' +
  'created_at_ms, updated_at_ms, detail, last_seq, acked_seq, previous_expires_at_ms, acked_generation, acked_expires_at_ms, requested_host_id, ' +
  'restarts, last_error, last_error_at_ms, is_ensured, restart_policy, failures, restart_at_ms, running_since_ms';

/** The values of every column of `hosts` a record sets, in {@link HOST_INSERT_COLUMNS} order. */
export function hostValues(host: HostRecord): unknown[] {
  return [
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
    host.isSchedulable,
  ];
}

/** The columns {@link hostValues} fills. */
export const HOST_INSERT_COLUMNS =
  'host_id, name, state, join_secret_hash, join_expires_at_ms, join_lease_session_id, credential_generation, min_valid_generation, ' +
  'credential_issued_at_ms, credential_expires_at_ms, capacity, labels, last_seen_ms, created_at_ms, is_schedulable';

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
    isSchedulable: row.is_schedulable,
  };
}

export function drainFromRow(row: DrainRow): HostDrainRecord {
  return { hostId: row.host_id, state: row.state as HostDrainState, startedAtMs: row.started_at_ms, updatedAtMs: row.updated_at_ms };
}

export function moveFromRow(row: MoveRow): AgentMoveRecord {
  return { agentId: row.agent_id, fromHostId: row.from_host_id, toHostId: row.to_host_id, incarnation: row.incarnation, reservedAtMs: row.reserved_at_ms };
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

// --- Admin tokens, the audit log, lifecycle events (migration 2) ---

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

/** A row of `audit_records` (`targets`: the JSON of the list). */
export interface AuditRow {
  id: number;
  at_ms: number;
  token_id: string;
  method: string;
  targets: string;
  code: number;
}

export function auditFromRow(row: AuditRow): AuditRecord {
  return { id: row.id, atMs: row.at_ms, tokenId: row.token_id, method: row.method, targets: JSON.parse(row.targets) as AuditTarget[], code: row.code };
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
