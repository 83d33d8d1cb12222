import { InvalidArgumentError } from '../../common/errors.js';
import { AgentState, type AgentSpec, type Label } from '../../gen/tether/v1/common.js';
import type { AgentInfo } from '../../gen/tether/v1/admin.js';
import type { AgentRecord, AgentSpecRecord, AgentStateName, LabelRecord } from '../store/store.js';

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
    createdAtMs: agent.createdAtMs,
    updatedAtMs: agent.updatedAtMs,
    lastHeartbeatMs,
    detail: agent.detail,
  };
}

/** A spec from the wire; kind is validated where agents are created. */
export function specFromProto(spec: AgentSpec | undefined): AgentSpecRecord {
  if (spec === undefined) throw new InvalidArgumentError('spec is required');
  return { kind: spec.kind, module: spec.module, command: spec.command, args: [...spec.args], config: spec.config };
}

/** Labels from the wire. */
export function labelsFromProto(labels: readonly Label[]): LabelRecord[] {
  return labels.map((label) => ({ key: label.key, value: label.value }));
}

/** Page size: default 100, at most 1000. */
export function pageSize(requested: number): number {
  if (requested === 0) return 100;
  return Math.min(1000, requested);
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
