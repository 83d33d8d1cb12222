/** Store records for tests: valid, with every field set, and a patch on top. */
import type { AgentRecord, HostRecord, SigningKeyRecord, SigningKeyState } from '../../control-plane/store/store.js';

export const NOW = 1_800_000_000_000;

export function agent(agentId: string, patch: Partial<AgentRecord> = {}): AgentRecord {
  return {
    agentId,
    name: agentId,
    state: 'running',
    hostId: 'host-1',
    hostLabels: [{ key: 'zone', value: 'a' }],
    spec: { kind: 'module', module: 'idle', command: '', args: ['--x'], config: '{"k":1}' },
    incarnation: 1,
    generation: 1,
    tokenId: `jti-${agentId}`,
    issuedAtMs: NOW,
    expiresAtMs: NOW + 3_600_000,
    rotationDueAtMs: NOW + 1_800_000,
    createdAtMs: NOW,
    updatedAtMs: NOW,
    detail: '',
    lastSeq: 0,
    ackedSeq: 0,
    previousExpiresAtMs: 0,
    ackedGeneration: 0,
    ackedExpiresAtMs: 0,
    requestedHostId: null,
    restarts: 0,
    lastError: '',
    lastErrorAtMs: 0,
    isEnsured: false,
    restartPolicy: 'never',
    failures: 0,
    restartAtMs: 0,
    runningSinceMs: 0,
    ...patch,
  };
}

export function host(hostId: string, patch: Partial<HostRecord> = {}): HostRecord {
  return {
    hostId,
    name: hostId,
    state: 'enrolled',
    joinSecretHash: 'ab'.repeat(32),
    joinExpiresAtMs: NOW + 3_600_000,
    joinLeaseSessionId: null,
    credentialGeneration: 0,
    minValidGeneration: 0,
    credentialIssuedAtMs: 0,
    credentialExpiresAtMs: 0,
    capacity: 0,
    labels: [{ key: 'zone', value: 'a' }],
    lastSeenMs: 0,
    createdAtMs: NOW,
    isSchedulable: true,
    ...patch,
  };
}

/** A signing key record in `state` (verifying-only by default, which any number of keys may be); private half only while it can sign. */
export function signingKey(kid: string, createdAtMs: number, state: SigningKeyState = 'verifying-only'): SigningKeyRecord {
  const canSign = state === 'standby' || state === 'signing';
  return {
    kid,
    purpose: 'tokens',
    state,
    privateJwk: canSign ? `{"kid":"${kid}","d":"secret"}` : null,
    publicJwk: `{"kid":"${kid}"}`,
    createdAtMs,
    signingSinceMs: state === 'standby' ? null : createdAtMs,
    retiredAtMs: canSign ? null : createdAtMs + 1,
    verifyUntilMs: canSign ? null : createdAtMs + 10_000,
  };
}
