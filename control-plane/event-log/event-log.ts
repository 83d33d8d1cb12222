import type { Clock } from '../../common/clock.js';
import { ClosedError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { EventRecord, EventStore, NewEventRecord } from '../store/event-store.js';

/** Events buffered for the store at most; past it new ones are dropped (and counted), never let to grow memory. */
export const DEFAULT_MAX_PENDING_EVENTS = 65_536;
/**
 * Events one store write takes at most: also the most one watcher is handed in
 * one step, so it must stay well below a watcher's bound (which only drains
 * between steps).
 */
export const MAX_EVENTS_PER_WRITE = 512;
/** Rows one prune deletes at most (a prune is a write on the event loop); a sweep repeats it a bounded number of times. */
const MAX_PRUNED_PER_WRITE = 10_000;
const MAX_PRUNE_WRITES_PER_SWEEP = 100;

/** Options of {@link EventLog.open}. */
export interface EventLogOptions {
  store: EventStore;
  clock: Clock;
  logger: Logger;
  /** Events older than this are pruned. */
  retentionMs: number;
  /** Events past the newest this many are pruned. */
  retentionCount: number;
  /** How often pruning runs (on the clock). */
  pruneIntervalMs: number;
  /** Default {@link DEFAULT_MAX_PENDING_EVENTS}. */
  maxPendingEvents?: number;
}

/** A live subscriber: called with each event once it is in the store, in id order. */
export type EventListener = (event: EventRecord) => void;

/**
 * The control plane's lifecycle events, on their way to the store and to live
 * watchers. `record` only buffers (it never waits, so a rotation never pays for
 * its event); the buffer goes to the store in one write per turn of the event
 * loop (the store's group commit may join it with others), writes one after
 * another. Once a write has committed, its events (now with their ids) are
 * handed to every listener, in id order, in the same synchronous step that
 * moves {@link lastId}: so a reader that read the store up to `lastId` and then
 * subscribed, without an `await` between, misses nothing and sees nothing twice.
 *
 * Lifecycle: `open` (reads the last id), `start` (pruning), `close` (writes
 * what is buffered, stops pruning; `record` is ignored from then on).
 */
export class EventLog {
  readonly #store: EventStore;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #options: EventLogOptions;
  readonly #maxPending: number;
  readonly #listeners = new Set<EventListener>();
  readonly #closing = new AbortController();
  #pending: NewEventRecord[] = [];
  #isScheduled = false;
  #writing: Promise<void> = Promise.resolve();
  #lastId: number;
  #dropped = 0;
  #pruning: Promise<void> | undefined;
  #state: 'open' | 'closed' = 'open';

  private constructor(options: EventLogOptions, lastId: number) {
    this.#options = options;
    this.#store = options.store;
    this.#clock = options.clock;
    this.#logger = options.logger.child({ component: 'events' });
    this.#maxPending = options.maxPendingEvents ?? DEFAULT_MAX_PENDING_EVENTS;
    this.#lastId = lastId;
  }

  /** An event log over `options.store`, continuing its ids. */
  static async open(options: EventLogOptions): Promise<EventLog> {
    const { lastId } = await options.store.eventIdRange();
    return new EventLog(options, lastId);
  }

  /** The store the events are kept in. */
  get store(): EventStore {
    return this.#store;
  }

  /** The id of the last event written and handed to listeners (0: none yet). */
  get lastId(): number {
    return this.#lastId;
  }

  /** Events waiting to be written. */
  get pendingEvents(): number {
    return this.#pending.length;
  }

  /** Events dropped because the buffer was full (the store fell behind) or their write failed. */
  get droppedEvents(): number {
    return this.#dropped;
  }

  /** Buffers an event (its time: now, on the clock); written at the next turn. Never waits, never throws. */
  record(event: Omit<NewEventRecord, 'atMs'>): void {
    if (this.#state === 'closed') return;
    if (this.#pending.length >= this.#maxPending) {
      if (this.#dropped++ % 1_000 === 0) this.#logger.warn({ pending: this.#pending.length, dropped: this.#dropped }, 'event buffer full (the store is behind): events dropped');
      return;
    }
    this.#pending.push({ ...event, atMs: this.#clock.now() });
    this.#schedule();
  }

  /** Calls `listener` with every event written from now on; returns its removal. */
  subscribe(listener: EventListener): () => void {
    if (this.#state === 'closed') throw new ClosedError('event log');
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Resolves once every event recorded so far is written (or dropped) and handed to listeners. */
  async flush(): Promise<void> {
    for (let round = 0; round < 1_000 && (this.#pending.length > 0 || this.#isScheduled); round++) {
      await this.#writing;
      if (this.#pending.length > 0 && !this.#isScheduled) this.#schedule();
      await this.#writing;
    }
  }

  /** Starts pruning, every `pruneIntervalMs` on the clock. */
  start(): void {
    this.#pruning ??= this.#pruneLoop();
  }

  /** @internal One pruning sweep now (tests); resolves with how many events went. */
  async prune(): Promise<number> {
    let deleted = 0;
    const beforeMs = this.#clock.now() - this.#options.retentionMs;
    for (let write = 0; write < MAX_PRUNE_WRITES_PER_SWEEP; write++) {
      const n = await this.#store.pruneEvents(beforeMs, this.#options.retentionCount, MAX_PRUNED_PER_WRITE);
      deleted += n;
      if (n < MAX_PRUNED_PER_WRITE) break;
    }
    if (deleted > 0) this.#logger.debug({ deleted }, 'events pruned');
    return deleted;
  }

  /** Writes what is buffered, stops pruning and takes no more events. Idempotent. Listeners are the watchers' to remove. */
  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    await this.flush();
    this.#state = 'closed';
    this.#closing.abort();
    await this.#pruning;
  }

  async #pruneLoop(): Promise<void> {
    const signal = this.#closing.signal;
    while (!signal.aborted) {
      await this.#clock.sleep(this.#options.pruneIntervalMs, signal);
      if (signal.aborted) return;
      try {
        await this.prune();
      } catch (err) {
        this.#logger.error({ err }, 'pruning events failed');
      }
    }
  }

  #schedule(): void {
    if (this.#isScheduled) return;
    this.#isScheduled = true;
    const previous = this.#writing;
    this.#writing = new Promise<void>((resolve) => {
      // One write per turn: every event recorded in this turn goes in it.
      setImmediate(() => {
        this.#writeAfter(previous).then(resolve, resolve);
      });
    });
  }

  async #writeAfter(previous: Promise<void>): Promise<void> {
    await previous;
    this.#isScheduled = false;
    const batch = this.#pending.splice(0, MAX_EVENTS_PER_WRITE);
    if (this.#pending.length > 0) this.#schedule();
    if (batch.length === 0) return;
    let written: EventRecord[];
    try {
      written = await this.#store.appendEvents(batch);
    } catch (err) {
      this.#dropped += batch.length;
      this.#logger.error({ err, events: batch.length }, 'writing events failed: they are lost');
      return;
    }
    // lastId moves and listeners are called in one synchronous step (see the class comment).
    for (const event of written) {
      this.#lastId = event.id;
      for (const listener of this.#listeners) {
        try {
          listener(event);
        } catch (err) {
          this.#logger.error({ err }, 'event listener failed');
        }
      }
    }
  }
}
