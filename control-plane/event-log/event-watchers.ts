import { OutOfRangeError, ResourceExhaustedError, UnavailableError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import { StreamWriter, type WritableLike } from '../../common/stream-writer.js';
import type { WatchEventsResponse } from '../../gen/tether/v1/admin.js';
import { matchesEventFilter, type EventFilter, type EventRecord } from '../store/event-store.js';
import { MAX_EVENTS_PER_WRITE, type EventLog } from './event-log.js';

/**
 * Events one watcher may have waiting (its stream full) before it is cut: eight
 * of the log's largest steps ({@link MAX_EVENTS_PER_WRITE}), so a watcher that
 * reads is not cut by a burst (a rotation storm), and at a few hundred bytes an
 * event, about a MiB held for one that does not read.
 */
export const DEFAULT_MAX_QUEUED_PER_WATCHER = 8 * MAX_EVENTS_PER_WRITE;
/** Events read from the store at a time while a watcher catches up. */
const CATCH_UP_PAGE = 256;

/** Options of {@link EventWatchers}. */
export interface EventWatchersOptions {
  log: EventLog;
  logger: Logger;
  /** Default {@link DEFAULT_MAX_QUEUED_PER_WATCHER}. */
  maxQueuedPerWatcher?: number;
  /** Told of each watcher cut, with the events it had waiting. */
  onCut?: (queued: number) => void;
}

/** What a watcher asked for. */
export interface WatchRequest {
  filter: EventFilter;
  /** Resume after this id; undefined: live events only, from now. */
  afterId: number | undefined;
}

/** One watcher's end, once decided: undefined when its caller went away. */
type WatchEnd = ResourceExhaustedError | UnavailableError | undefined;

/** One watcher: its writer and how it ends. */
interface Watcher {
  writer: StreamWriter<WatchEventsResponse>;
  end: (why: WatchEnd) => void;
  ended: Promise<WatchEnd>;
  isEnded: boolean;
}

/** The message of `event`. */
function toMessage(event: EventRecord): WatchEventsResponse {
  return { event: { ...event } };
}

/**
 * The live WatchEvents streams. A watcher that resumes (an `afterId`) first
 * gets what the store kept after it, page by page and only as fast as it
 * reads, up to the log's last id at that moment (or the store's, when other
 * control planes on a shared store wrote past it); then, in the same synchronous
 * step, it subscribes to the log, whose events all have larger ids: no gap, no
 * repeat. Live events are this control plane's own: on a store several share
 * (PostgreSQL), another's events written after the catch-up reach a watcher
 * here only when it watches again with an `afterId`. Live events wait in the watcher's {@link StreamWriter} while its
 * stream is full (its client not reading: HTTP/2 flow control); past
 * `maxQueuedPerWatcher` of them it is cut with RESOURCE_EXHAUSTED, so a
 * watcher that never reads holds at most that many events here (plus what
 * grpc-js took before it said its buffer was full).
 */
export class EventWatchers {
  readonly #log: EventLog;
  readonly #logger: Logger;
  readonly #maxQueued: number;
  readonly #onCut: (queued: number) => void;
  readonly #active = new Set<Watcher>();
  #cutTotal = 0;
  #peakQueued = 0;

  constructor(options: EventWatchersOptions) {
    this.#log = options.log;
    this.#logger = options.logger.child({ component: 'event-watchers' });
    this.#maxQueued = options.maxQueuedPerWatcher ?? DEFAULT_MAX_QUEUED_PER_WATCHER;
    this.#onCut = options.onCut ?? ((): void => {});
  }

  /** Watchers streaming now (catching up or live). */
  get count(): number {
    return this.#active.size;
  }

  /** Watchers cut for not reading, since start. */
  get cutTotal(): number {
    return this.#cutTotal;
  }

  /** The most events any watcher has had waiting at once (never more than the bound). */
  get peakQueued(): number {
    return this.#peakQueued;
  }

  /** The bound on one watcher's waiting events. */
  get maxQueuedPerWatcher(): number {
    return this.#maxQueued;
  }

  /**
   * Streams events to `stream` until `signal` aborts (resolves), or the watcher
   * is cut (ResourceExhaustedError) or the control plane closes (UnavailableError).
   * An `afterId` older than the oldest kept, or past the newest, is refused
   * with OutOfRangeError before anything is sent.
   */
  async watch(request: WatchRequest, stream: WritableLike<WatchEventsResponse>, signal: AbortSignal): Promise<void> {
    const { filter, afterId } = request;
    const storeLastId = afterId === undefined ? 0 : await this.#checkKept(afterId);
    let resolveEnd: (why: WatchEnd) => void = () => {};
    const watcher: Watcher = {
      writer: new StreamWriter(stream),
      end: (why) => {
        if (watcher.isEnded) return;
        watcher.isEnded = true;
        watcher.writer.close();
        resolveEnd(why);
      },
      ended: new Promise<WatchEnd>((resolve) => (resolveEnd = resolve)),
      isEnded: false,
    };
    const onAbort = (): void => watcher.end(undefined);
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) watcher.end(undefined);
    this.#active.add(watcher);
    let unsubscribe = (): void => {};
    try {
      const cursor = afterId === undefined ? this.#log.lastId : await this.#catchUp(watcher, filter, afterId, storeLastId);
      if (!watcher.isEnded) {
        // No await since catch-up saw the log's last id: every event the log hands over from here has a larger one.
        unsubscribe = this.#log.subscribe((event) => {
          if (event.id > cursor && !watcher.isEnded && matchesEventFilter(event, filter)) this.#offer(watcher, event);
        });
      }
      const why = await watcher.ended;
      if (why !== undefined) throw why;
    } finally {
      unsubscribe();
      signal.removeEventListener('abort', onAbort);
      watcher.end(undefined);
      this.#active.delete(watcher);
    }
  }

  /** Ends every watcher (the control plane is closing): each is told UNAVAILABLE and may resume elsewhere or later. */
  closeAll(): void {
    for (const watcher of this.#active) watcher.end(new UnavailableError('the control plane is shutting down; watch again with after_event_id set to the last id you got'));
  }

  /**
   * Refuses an `afterId` pruned or past the newest event; returns the store's
   * last id. On a store shared by several control planes (PostgreSQL) that can
   * be past this log's own: the others' events, which a watcher that moved here
   * from another control plane may have seen.
   */
  async #checkKept(afterId: number): Promise<number> {
    const { firstId, lastId: storeLastId } = await this.#log.store.eventIdRange();
    if (afterId < firstId - 1) {
      throw new OutOfRangeError(`events after ${afterId} were pruned: the oldest event kept is ${firstId}; watch from after_event_id ${firstId - 1}, or without one for live events`);
    }
    const lastId = Math.max(storeLastId, this.#log.lastId);
    if (afterId > lastId) throw new OutOfRangeError(`after_event_id ${afterId} is past the newest event, ${lastId} (was the store restored from a backup?)`);
    return storeLastId;
  }

  /**
   * Sends the kept events after `afterId` that pass `filter`, as fast as the
   * watcher reads (its writer kept at most half full, so it goes live with
   * room), until it has read up to the log's last id and to `storeLastId`,
   * the store's when the watch began (other control planes' events on a
   * shared store: read once, so a busy neighbour cannot keep it catching up);
   * returns the id it read up to.
   */
  async #catchUp(watcher: Watcher, filter: EventFilter, afterId: number, storeLastId: number): Promise<number> {
    const room = Math.max(1, Math.floor(this.#maxQueued / 2));
    let cursor = afterId;
    // Each round moves the cursor forward (to the last id read, or to the horizon), so it ends.
    // The log's last id is read with no await before the caller subscribes: nothing it handed over is missed.
    while (cursor < Math.max(this.#log.lastId, storeLastId) && !watcher.isEnded) {
      const horizon = Math.max(this.#log.lastId, storeLastId);
      const page = await this.#log.store.listEvents(cursor, horizon, filter, CATCH_UP_PAGE);
      // Pruned under a slow reader: what it missed is gone, so say so rather than skip it.
      await this.#checkKept(cursor);
      for (const event of page) {
        await watcher.writer.whenBelow(room);
        if (watcher.isEnded) return cursor;
        watcher.writer.write(toMessage(event));
      }
      const last = page[page.length - 1];
      cursor = page.length < CATCH_UP_PAGE || last === undefined ? horizon : last.id;
    }
    return cursor;
  }

  #offer(watcher: Watcher, event: EventRecord): void {
    if (watcher.writer.offer(toMessage(event), { maxQueued: this.#maxQueued })) {
      if (watcher.writer.queued > this.#peakQueued) this.#peakQueued = watcher.writer.queued;
      return;
    }
    const queued = watcher.writer.queued;
    this.#cutTotal++;
    this.#logger.warn({ queued, eventId: event.id }, 'event watcher cut: it does not read');
    this.#onCut(queued);
    watcher.end(
      new ResourceExhaustedError(
        `this watcher fell ${queued} events behind (the bound is ${this.#maxQueued}) and was cut; watch again with after_event_id set to the last id you got`,
      ),
    );
  }
}
