/**
 * What `agents ensure` compares: the spec an existing agent runs with against
 * the one asked for, field by field, so a different spec is refused by name
 * (or, with `update`, replaced) instead of being silently ignored.
 */
import type { AgentRecord, AgentSpecRecord, LabelRecord, RestartPolicyName } from '../store/store.js';

/** What an ensure asks for. */
export interface DesiredAgent {
  /** '' keeps the agent's name (a name is compared only when given). */
  name: string;
  spec: AgentSpecRecord;
  /** '' for none (placed by labels). */
  hostId: string;
  hostLabels: readonly LabelRecord[];
  /** Undefined keeps the agent's (a policy is compared only when given). */
  restartPolicy?: RestartPolicyName | undefined;
}

function labelKey(labels: readonly LabelRecord[]): string {
  return JSON.stringify([...labels].map((l) => [l.key, l.value]).sort());
}

/**
 * The fields in which `desired` differs from `agent`, named as on the wire
 * (`spec.module`, `host_labels`, …), in a fixed order; empty when they agree.
 * Only names, never values: `spec.config` and `spec.args` may carry secrets,
 * and the answer goes into an error message. Labels compare as a set.
 */
export function specDifferences(
  agent: Pick<AgentRecord, 'name' | 'spec' | 'requestedHostId' | 'hostLabels'> & Partial<Pick<AgentRecord, 'restartPolicy'>>,
  desired: DesiredAgent,
): string[] {
  const differences: string[] = [];
  if (desired.name !== '' && desired.name !== agent.name) differences.push('name');
  if (desired.spec.kind !== agent.spec.kind) differences.push('spec.kind');
  if (desired.spec.module !== agent.spec.module) differences.push('spec.module');
  if (desired.spec.command !== agent.spec.command) differences.push('spec.command');
  const args = agent.spec.args;
  if (desired.spec.args.length !== args.length || desired.spec.args.some((arg, i) => arg !== args[i])) differences.push('spec.args');
  if (desired.spec.config !== agent.spec.config) differences.push('spec.config');
  if (JSON.stringify(desired.spec.audienceFiles?.files ?? []) !== JSON.stringify(agent.spec.audienceFiles?.files ?? [])) differences.push('spec.audience_files');
  if ((desired.hostId === '' ? null : desired.hostId) !== agent.requestedHostId) differences.push('host_id');
  if (labelKey(desired.hostLabels) !== labelKey(agent.hostLabels)) differences.push('host_labels');
  if (desired.restartPolicy !== undefined && desired.restartPolicy !== (agent.restartPolicy ?? 'never')) differences.push('restart_policy');
  return differences;
}
