/**
 * Where an agent goes: a pure function of the candidate hosts and the agent's
 * constraint, so the rule is table-tested apart from the store and the streams.
 * The choice is advisory: the store re-checks capacity when it records the
 * placement (`Store.placeAgent`), as another placement may have taken the room.
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
  /** Connected (its stream open), not revoked, and able to run the agent's spec. */
  isSchedulable: boolean;
}

/** What an agent asks of its host. */
export interface PlacementConstraint {
  /** A named host: that one or none. */
  hostId: string | null;
  /** Labels a host must carry, every one of them (ignored when a host is named). */
  labels: readonly LabelRecord[];
}

/** Whether `candidate` has room for one more agent. */
export function hasRoom(candidate: Pick<PlacementCandidate, 'capacity' | 'load'>): boolean {
  return candidate.capacity <= 0 || candidate.load < candidate.capacity;
}

/** Whether `candidate` carries every label in `wanted` (same key, same value). */
export function carriesLabels(candidate: Pick<PlacementCandidate, 'labels'>, wanted: readonly LabelRecord[]): boolean {
  return wanted.every((w) => candidate.labels.some((l) => l.key === w.key && l.value === w.value));
}

/**
 * The host to place an agent on, or undefined if none fits: the named host if
 * it is schedulable and has room; otherwise, among schedulable hosts with room
 * that carry every wanted label, the least loaded, ties going to the smallest
 * host id (so the choice does not depend on the order hosts connected in).
 */
export function choosePlacement(candidates: readonly PlacementCandidate[], constraint: PlacementConstraint): string | undefined {
  if (constraint.hostId !== null) {
    const named = candidates.find((c) => c.hostId === constraint.hostId);
    return named !== undefined && named.isSchedulable && hasRoom(named) ? named.hostId : undefined;
  }
  let best: PlacementCandidate | undefined;
  for (const candidate of candidates) {
    if (!candidate.isSchedulable || !hasRoom(candidate) || !carriesLabels(candidate, constraint.labels)) continue;
    if (best === undefined || candidate.load < best.load || (candidate.load === best.load && candidate.hostId < best.hostId)) best = candidate;
  }
  return best?.hostId;
}
