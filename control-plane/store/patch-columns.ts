/**
 * The column of each field a patch may change, the same in every engine's
 * schema (SQLite and PostgreSQL name their columns alike).
 */
import type { AgentPatch, HostPatch } from './store.js';

/** The column of each field of an agent a patch may change. */
export const AGENT_COLUMNS: Record<keyof AgentPatch, string> = {
  name: 'name',
  state: 'state',
  hostId: 'host_id',
  hostLabels: 'host_labels',
  spec: 'spec',
  incarnation: 'incarnation',
  generation: 'generation',
  tokenId: 'token_id',
  issuedAtMs: 'issued_at_ms',
  expiresAtMs: 'expires_at_ms',
  rotationDueAtMs: 'rotation_due_at_ms',
  previousExpiresAtMs: 'previous_expires_at_ms',
  ackedGeneration: 'acked_generation',
  ackedExpiresAtMs: 'acked_expires_at_ms',
  updatedAtMs: 'updated_at_ms',
  detail: 'detail',
  lastSeq: 'last_seq',
  ackedSeq: 'acked_seq',
  requestedHostId: 'requested_host_id',
  restarts: 'restarts',
  lastError: 'last_error',
  lastErrorAtMs: 'last_error_at_ms',
  isEnsured: 'is_ensured',
  restartPolicy: 'restart_policy',
  failures: 'failures',
  restartAtMs: 'restart_at_ms',
  runningSinceMs: 'running_since_ms',
};

/** The column of each field of a host a patch may change. */
/** The column of each field of a host a patch may change. */
export const HOST_COLUMNS: Record<keyof HostPatch, string> = {
  name: 'name',
  state: 'state',
  joinSecretHash: 'join_secret_hash',
  joinExpiresAtMs: 'join_expires_at_ms',
  joinLeaseSessionId: 'join_lease_session_id',
  credentialGeneration: 'credential_generation',
  minValidGeneration: 'min_valid_generation',
  credentialIssuedAtMs: 'credential_issued_at_ms',
  credentialExpiresAtMs: 'credential_expires_at_ms',
  capacity: 'capacity',
  labels: 'labels',
  lastSeenMs: 'last_seen_ms',
  isSchedulable: 'is_schedulable',
};
