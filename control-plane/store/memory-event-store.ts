import { matchesEventFilter, type EventFilter, type EventIdRange, type EventRecord, type EventStore, type NewEventRecord } from './event-store.js';

/**
 * An {@link EventStore} in memory: what the control plane keeps events in when
 * its store has no events part (they are then lost at a restart). Bounded by
 * the same pruning as a durable one.
 */
export class MemoryEventStore implements EventStore {
  #events: EventRecord[] = [];
  #lastId = 0;

  appendEvents(events: readonly NewEventRecord[]): Promise<EventRecord[]> {
    const records = events.map((e): EventRecord => ({ ...e, id: ++this.#lastId }));
    this.#events.push(...records);
    return Promise.resolve(records);
  }

  listEvents(afterId: number, untilId: number, filter: EventFilter, limit: number): Promise<EventRecord[]> {
    const found: EventRecord[] = [];
    for (const event of this.#events) {
      if (found.length >= limit || event.id > untilId) break;
      if (event.id > afterId && matchesEventFilter(event, filter)) found.push({ ...event });
    }
    return Promise.resolve(found);
  }

  eventIdRange(): Promise<EventIdRange> {
    return Promise.resolve({ firstId: this.#events[0]?.id ?? this.#lastId + 1, lastId: this.#lastId });
  }

  pruneEvents(beforeMs: number, keepCount: number, maxDeleted: number): Promise<number> {
    const firstRecent = this.#events.findIndex((e) => e.atMs >= beforeMs);
    const byAge = firstRecent === -1 ? this.#events.length : firstRecent;
    const byCount = Math.max(0, this.#events.length - keepCount);
    const deleted = Math.min(Math.max(byAge, byCount), Math.max(0, maxDeleted));
    this.#events = this.#events.slice(deleted);
    return Promise.resolve(deleted);
  }
}
