/**
 * Where an agent goes: a pure function of the candidate hosts and the agent's
 * constraint, so the rule is table-tested apart from the store and the streams.
 * The choice is advisory: the store re-checks capacity and the schedulable flag
 * when it records the placement (`Store.placeAgent`), as another placement may
 * have taken the room or an operator cordoned the host meanwhile.
 */
import type { LabelRecord } from '../store/store.js';

/** One host placement may choose. */
export interface PlacementCandidate {
  hostId: string;
  labels: readonly LabelRecord[];
  /** Agents it runs at most; 0 for no limit. */
  capacity: number;
  /** Its agents in a live state now. */
  load: number;
  /** Its stream is open and it is not revoked. */
  isConnected: boolean;
  /** Not cordoned by an operator (drain cordons): only a schedulable host takes new agents. */
  isSchedulable: boolean;
  /** Why it cannot run the agent's spec (a module it lacks, a command it does not allow); undefined if it can. */
  unsupportedReason?: string | undefined;
}

/** What an agent asks of its host. */
export interface PlacementConstraint {
  /** A named host: that one or none. */
  hostId: string | null;
  /** Labels a host must carry, every one of them (ignored when a host is named). */
  labels: readonly LabelRecord[];
}

/** Where placement put an agent, or why it stays pending (the reason is shown to operators). */
export type PlacementDecision = { outcome: 'placed'; hostId: string; reason: string } | { outcome: 'pending'; reason: string };

/** Whether `candidate` has room for one more agent. */
export function hasRoom(candidate: Pick<PlacementCandidate, 'capacity' | 'load'>): boolean {
  return candidate.capacity <= 0 || candidate.load < candidate.capacity;
}

/** Whether `candidate` carries every label in `wanted` (same key, same value). */
export function carriesLabels(candidate: Pick<PlacementCandidate, 'labels'>, wanted: readonly LabelRecord[]): boolean {
  return wanted.every((w) => candidate.labels.some((l) => l.key === w.key && l.value === w.value));
}

/** Whether `candidate` may take a new agent of this spec at all, room aside. */
function isEligible(candidate: PlacementCandidate): boolean {
  return candidate.isConnected && candidate.isSchedulable && candidate.unsupportedReason === undefined;
}

/** `k=v,k2=v2`, for reasons. */
export function formatLabels(labels: readonly LabelRecord[]): string {
  return labels.map((l) => `${l.key}=${l.value}`).join(',');
}

/** Why `candidate` cannot take the agent (it is not eligible or has no room). */
function refusal(candidate: PlacementCandidate): string {
  if (!candidate.isConnected) return 'is not connected';
  if (!candidate.isSchedulable) return 'is cordoned (not schedulable)';
  if (candidate.unsupportedReason !== undefined) return `cannot run it: ${candidate.unsupportedReason}`;
  return `is full (${candidate.load} of ${candidate.capacity} agents)`;
}

/**
 * The host to place an agent on, or why none fits: the named host if it is
 * connected, schedulable, able to run the agent and has room; otherwise, among
 * such hosts that carry every wanted label, the least loaded, ties going to the
 * smallest host id (so the choice does not depend on the order hosts connected in).
 */
export function decidePlacement(candidates: readonly PlacementCandidate[], constraint: PlacementConstraint): PlacementDecision {
  if (constraint.hostId !== null) {
    const named = candidates.find((c) => c.hostId === constraint.hostId);
    if (named === undefined) return { outcome: 'pending', reason: `host ${constraint.hostId} is not connected` };
    if (isEligible(named) && hasRoom(named)) return { outcome: 'placed', hostId: named.hostId, reason: `placed on the named host ${named.hostId}` };
    return { outcome: 'pending', reason: `host ${named.hostId} ${refusal(named)}` };
  }
  let best: PlacementCandidate | undefined;
  for (const candidate of candidates) {
    if (!isEligible(candidate) || !hasRoom(candidate) || !carriesLabels(candidate, constraint.labels)) continue;
    if (best === undefined || candidate.load < best.load || (candidate.load === best.load && candidate.hostId < best.hostId)) best = candidate;
  }
  const wanted = constraint.labels.length === 0 ? '' : ` carrying ${formatLabels(constraint.labels)}`;
  if (best !== undefined) return { outcome: 'placed', hostId: best.hostId, reason: `placed on the least loaded host${wanted} (load ${best.load})` };
  return { outcome: 'pending', reason: pendingReason(candidates, constraint.labels) };
}

/** Why no host fits an agent placed by labels: how many hosts were turned away for what. */
function pendingReason(candidates: readonly PlacementCandidate[], wanted: readonly LabelRecord[]): string {
  const connected = candidates.filter((c) => c.isConnected);
  if (connected.length === 0) return 'no host is connected';
  const labelled = connected.filter((c) => carriesLabels(c, wanted));
  if (labelled.length === 0) return `no connected host carries ${formatLabels(wanted)}`;
  const counts = new Map<string, number>();
  for (const candidate of labelled) {
    const why = !candidate.isSchedulable ? 'cordoned' : candidate.unsupportedReason !== undefined ? 'cannot run it' : 'full';
    counts.set(why, (counts.get(why) ?? 0) + 1);
  }
  const summary = [...counts].map(([why, n]) => `${n} ${why}`).join(', ');
  const what = wanted.length === 0 ? 'connected host' : `connected host carrying ${formatLabels(wanted)}`;
  return `no ${what} can take it (${summary})`;
}

/** The host {@link decidePlacement} chooses, or undefined if the agent stays pending. */
export function choosePlacement(candidates: readonly PlacementCandidate[], constraint: PlacementConstraint): string | undefined {
  const decision = decidePlacement(candidates, constraint);
  return decision.outcome === 'placed' ? decision.hostId : undefined;
}
