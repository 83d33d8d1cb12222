/**
 * The store's part for lifecycle events (`AdminService.WatchEvents`): an
 * append-only log with increasing ids and bounded retention. Kept apart from
 * {@link Store} and small, so each engine (SQLite, PostgreSQL) implements the
 * same four methods.
 */

/** Every kind of event, and what it means. */
export const EVENT_KINDS = [
  /** An agent was put on a host and sent its first credential (state `starting`). */
  'agent.placed',
  /** Its host reported it running (after `agent.placed`, or again after a stall). */
  'agent.started',
  /** Its host reported it stalled (missed heartbeats, or a message held past its handler deadline). */
  'agent.stalled',
  /** Its host was lost. */
  'agent.lost',
  /** It ended by itself (`detail` says whether it is restarted). */
  'agent.exited',
  /** It ended with an error (`detail` says what, and whether it is restarted). */
  'agent.failed',
  /** An operator stopped it. */
  'agent.stopped',
  /** It waits to be placed (again): a restart, a fenced copy, an ensure, its host revoked. */
  'agent.pending',
  /** A drain moved it to another host (`hostId`: the new one). */
  'agent.moved',
  /** A credential was replaced: an agent's (`agentId`) or a host's (no `agentId`); `reason` says why. */
  'credential.rotated',
  /** A message was refused too often and dead-lettered (`detail`: its id and seq). */
  'message.dead_lettered',
  /** A host's stream opened. */
  'host.connected',
  /** A host's stream ended. */
  'host.disconnected',
  /** A host was declared lost (no contact for the lost-host grace). */
  'host.lost',
  /** A drain finished: nothing movable is left on the host. */
  'host.drained',
  /** A signing key was promoted (`keyId`: the new signer). */
  'key.rotated',
  /** A signing key was revoked. */
  'key.revoked',
] as const;

/** One of {@link EVENT_KINDS}. */
export type EventKind = (typeof EVENT_KINDS)[number];

/** Whether `kind` is one of {@link EVENT_KINDS}. */
export function isEventKind(kind: string): kind is EventKind {
  return (EVENT_KINDS as readonly string[]).includes(kind);
}

/** An event before the store gave it an id. Empty strings and 0 stand for "not applicable". */
export interface NewEventRecord {
  atMs: number;
  kind: EventKind;
  agentId: string;
  hostId: string;
  incarnation: number;
  generation: number;
  keyId: string;
  /** A short word: why a credential was rotated (`due`, `delivery`, `resume`, `forced`, `key-revoked`). */
  reason: string;
  /** A sentence for people. Never a token or a payload. */
  detail: string;
}

/** An event as kept: with its id, increasing in the order events were recorded. */
export interface EventRecord extends NewEventRecord {
  id: number;
}

/**
 * Which events a watcher wants: every given field must match (an empty one
 * matches anything); `kinds` matches any of its kinds.
 */
export interface EventFilter {
  agentId: string;
  hostId: string;
  kinds: readonly EventKind[];
}

/** The filter that matches every event. */
export const ANY_EVENT: EventFilter = { agentId: '', hostId: '', kinds: [] };

/** Whether `event` passes `filter`; the store's listEvents filters the same way. */
export function matchesEventFilter(event: NewEventRecord, filter: EventFilter): boolean {
  if (filter.agentId !== '' && event.agentId !== filter.agentId) return false;
  if (filter.hostId !== '' && event.hostId !== filter.hostId) return false;
  return filter.kinds.length === 0 || filter.kinds.includes(event.kind);
}

/** The ids an {@link EventStore} holds. */
export interface EventIdRange {
  /** The oldest id kept; `lastId + 1` when none is kept. */
  firstId: number;
  /** The highest id ever given (0: none yet), kept even once its event is pruned. */
  lastId: number;
}

/** The lifecycle events' part of the control plane's store. Every method is one transaction. */
export interface EventStore {
  /** Appends `events` in one transaction, in order; returns them with their ids (increasing, never reused). */
  appendEvents(events: readonly NewEventRecord[]): Promise<EventRecord[]>;
  /** Events with `afterId < id <= untilId` that pass `filter`, in id order, at most `limit`. */
  listEvents(afterId: number, untilId: number, filter: EventFilter, limit: number): Promise<EventRecord[]>;
  eventIdRange(): Promise<EventIdRange>;
  /**
   * Deletes the oldest events, at most `maxDeleted`: those before the first one
   * recorded at or after `beforeMs`, and those past the newest `keepCount`.
   * Always a prefix in id order, so the ids kept run from `firstId` to `lastId`.
   * Returns how many went.
   */
  pruneEvents(beforeMs: number, keepCount: number, maxDeleted: number): Promise<number>;
}
