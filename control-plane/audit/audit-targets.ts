import type { AuditTarget } from '../store/audit-store.js';

/**
 * The fields of a request (or response) the audit log keeps, and the kind each
 * names. A whitelist: a field not here (a payload, a join token, a token's
 * secret, an operator's free-text reason) is never recorded, whatever the RPC.
 */
const TARGET_FIELDS: readonly (readonly [field: string, kind: string])[] = [
  ['agentId', 'agent'],
  ['hostId', 'host'],
  ['keyId', 'key'],
  ['tokenId', 'token'],
  ['seq', 'seq'],
  ['purpose', 'purpose'],
  ['name', 'name'],
  ['role', 'role'],
];

/** Messages of a response whose own id is kept too (the agent a dispatch created, the token an add made), and that id's field. */
const NESTED_RESPONSE_IDS: readonly (readonly [message: string, field: string])[] = [
  ['agent', 'agentId'],
  ['token', 'tokenId'],
];

/** Longest id kept: a request can name anything, the log stays small. */
const MAX_ID_CHARS = 200;

function targetsOf(message: unknown, into: AuditTarget[], only?: string): void {
  if (message === null || typeof message !== 'object') return;
  const fields = message as Record<string, unknown>;
  for (const [field, kind] of TARGET_FIELDS) {
    if (only !== undefined && field !== only) continue;
    const value = fields[field];
    if ((typeof value === 'string' && value !== '') || (typeof value === 'number' && value !== 0)) {
      const id = String(value).slice(0, MAX_ID_CHARS);
      if (!into.some((t) => t.kind === kind && t.id === id)) into.push({ kind, id });
    }
  }
}

/**
 * The ids an AdminService call named: those of its request and, when it
 * succeeded, those its response names at the top and the id of its `agent` or
 * `token` (an id the control plane chose: a dispatched agent, an enrolled host,
 * a new token or signer). Each once, in that order.
 */
export function auditTargets(request: unknown, response?: unknown): AuditTarget[] {
  const targets: AuditTarget[] = [];
  targetsOf(request, targets);
  if (response !== null && typeof response === 'object') {
    targetsOf(response, targets);
    for (const [message, field] of NESTED_RESPONSE_IDS) targetsOf((response as Record<string, unknown>)[message], targets, field);
  }
  return targets;
}
