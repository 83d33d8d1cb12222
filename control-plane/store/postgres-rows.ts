/**
 * What the PostgreSQL store writes: patch values and the column values of a
 * whole agent or host row (reading rows back is store-rows.ts, shared with
 * SQLite).
 */
import type { AgentRecord, HostRecord } from './store.js';

/** Encodes a patch value for its column: JSON text for structured fields, as-is otherwise (booleans are BOOLEAN). */
export function columnValue(value: unknown): unknown {
  return typeof value === 'object' && value !== null ? JSON.stringify(value) : value;
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

// --- Admin tokens, the audit log, lifecycle events (migration 2) ---
