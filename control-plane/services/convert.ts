import { InvalidArgumentError } from '../../common/errors.js';
import { AgentState, type AgentSpec, type Label } from '../../gen/tether/v1/common.js';
import type { AgentInfo, AgentTransition } from '../../gen/tether/v1/admin.js';
import type { AgentRecord, AgentSpecRecord, AgentStateName, AgentTransitionRecord, LabelRecord, RestartPolicyName } from '../store/store.js';
import { parseRestartPolicy, RESTART_POLICIES } from '../agents/restart-policy.js';

const STATE_TO_PROTO: Readonly<Record<AgentStateName, AgentState>> = {
  pending: AgentState.AGENT_STATE_PENDING,
  starting: AgentState.AGENT_STATE_STARTING,
  running: AgentState.AGENT_STATE_RUNNING,
  stalled: AgentState.AGENT_STATE_STALLED,
  lost: AgentState.AGENT_STATE_LOST,
  exited: AgentState.AGENT_STATE_EXITED,
  failed: AgentState.AGENT_STATE_FAILED,
  stopped: AgentState.AGENT_STATE_STOPPED,
};

/** The wire enum of a state. */
export function stateToProto(state: AgentStateName): AgentState {
  return STATE_TO_PROTO[state];
}

/** The wire form of an agent. */
export function toAgentInfo(agent: AgentRecord, lastHeartbeatMs = 0): AgentInfo {
  return {
    agentId: agent.agentId,
    name: agent.name,
    state: stateToProto(agent.state),
    hostId: agent.hostId ?? '',
    spec: agent.spec,
    incarnation: agent.incarnation,
    generation: agent.generation,
    expiresAtMs: agent.expiresAtMs,
    ackedGeneration: agent.ackedGeneration,
    ackedExpiresAtMs: agent.ackedExpiresAtMs,
    createdAtMs: agent.createdAtMs,
    updatedAtMs: agent.updatedAtMs,
    lastHeartbeatMs,
    detail: agent.detail,
    restarts: agent.restarts,
    lastError: agent.lastError,
    lastErrorAtMs: agent.lastErrorAtMs,
    requestedHostId: agent.requestedHostId ?? '',
    hostLabels: agent.hostLabels,
    restartPolicy: agent.restartPolicy,
    failures: agent.failures,
    restartAtMs: agent.state === 'pending' ? agent.restartAtMs : 0,
  };
}

/** A restart policy from the wire: undefined when absent or empty (the default applies); InvalidArgumentError when unknown. */
export function restartPolicyFromProto(name: string | undefined): RestartPolicyName | undefined {
  if (name === undefined || name === '') return undefined;
  const policy = parseRestartPolicy(name);
  if (policy === undefined) throw new InvalidArgumentError(`restart_policy must be one of ${RESTART_POLICIES.join(', ')}`);
  return policy;
}

/** The wire form of one transition of an agent. */
export function toAgentTransition(transition: AgentTransitionRecord): AgentTransition {
  return {
    atMs: transition.atMs,
    fromState: transition.fromState === null ? AgentState.AGENT_STATE_UNSPECIFIED : stateToProto(transition.fromState),
    toState: stateToProto(transition.toState),
    hostId: transition.hostId ?? '',
    incarnation: transition.incarnation,
    reason: transition.reason,
  };
}

/** A spec from the wire; kind is validated where agents are created. */
export function specFromProto(spec: AgentSpec | undefined): AgentSpecRecord {
  if (spec === undefined) throw new InvalidArgumentError('spec is required');
  const files = spec.audienceFiles?.files ?? [];
  return {
    kind: spec.kind,
    module: spec.module,
    command: spec.command,
    args: [...spec.args],
    config: spec.config,
    ...(files.length === 0 ? {} : { audienceFiles: { files: files.map((file) => ({ name: file.name, audience: file.audience })) } }),
  };
}

/** Labels from the wire. */
export function labelsFromProto(labels: readonly Label[]): LabelRecord[] {
  return labels.map((label) => ({ key: label.key, value: label.value }));
}

/** The page size of a list call that names none (page_size 0). */
export const DEFAULT_PAGE_SIZE = 100;

/** The largest page a list call answers; a larger page_size is served this many. */
export const MAX_PAGE_SIZE = 1_000;

/**
 * The page size of an AdminService list call: 0 → {@link DEFAULT_PAGE_SIZE},
 * above {@link MAX_PAGE_SIZE} → that maximum. Anything else that is not a
 * positive whole number is InvalidArgumentError, never "everything": the
 * store's SQL reads a negative LIMIT as no limit at all. (On the wire
 * page_size is uint32, so a negative one reaches here only from an in-process
 * caller or a future transcoding; the guard stands for all of them.)
 */
export function pageSize(requested: number): number {
  if (!Number.isSafeInteger(requested) || requested < 0) throw new InvalidArgumentError(`page_size must be 0 (default ${DEFAULT_PAGE_SIZE}) or a positive whole number, got ${requested}`);
  if (requested === 0) return DEFAULT_PAGE_SIZE;
  return Math.min(MAX_PAGE_SIZE, requested);
}

/** Decodes an opaque page token into the id to list after. */
export function decodePageToken(token: string): string | null {
  if (token === '') return null;
  return Buffer.from(token, 'base64url').toString('utf8');
}

/** Encodes the id to list after as an opaque page token. */
export function encodePageToken(afterId: string | null): string {
  return afterId === null ? '' : Buffer.from(afterId, 'utf8').toString('base64url');
}
