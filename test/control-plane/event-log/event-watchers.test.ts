/**
 * The event log and its watchers on a store whose reads are really
 * asynchronous (as PostgreSQL's are; SQLite's run within the call, which hides
 * the race): events committed while a resuming watcher's catch-up read is in
 * flight reach it exactly once; a watcher whose stream never drains is cut at
 * its bound; closing ends every watcher UNAVAILABLE.
 */
import { describe, expect, it } from 'vitest';
import { OutOfRangeError, ResourceExhaustedError, UnavailableError } from '../../../common/errors.js';
import type { WritableLike } from '../../../common/stream-writer.js';
import { EventLog } from '../../../control-plane/event-log/event-log.js';
import { EventWatchers } from '../../../control-plane/event-log/event-watchers.js';
import type { EventFilter, EventRecord, NewEventRecord } from '../../../control-plane/store/event-store.js';
import { ANY_EVENT } from '../../../control-plane/store/event-store.js';
import { MemoryEventStore } from '../../../control-plane/store/memory-event-store.js';
import type { WatchEventsResponse } from '../../../gen/tether/v1/admin.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';
import { waitUntil } from '../../support/wait.js';

/** A memory store whose listEvents waits until `release()` when `isGated`. */
class GatedStore extends MemoryEventStore {
  isGated = false;
  readsWaiting = 0;
  #release: (() => void)[] = [];

  override async listEvents(afterId: number, untilId: number, filter: EventFilter, limit: number): Promise<EventRecord[]> {
    if (this.isGated) {
      this.readsWaiting++;
      await new Promise<void>((resolve) => this.#release.push(resolve));
      this.readsWaiting--;
    }
    return super.listEvents(afterId, untilId, filter, limit);
  }

  release(): void {
    this.isGated = false;
    for (const resolve of this.#release.splice(0)) resolve();
  }
}

/** A stream that takes every message at once, or (`isStuck`) none after the first: its client never reads. */
class FakeStream implements WritableLike<WatchEventsResponse> {
  readonly ids: number[] = [];
  constructor(readonly isStuck = false) {}
  write(message: WatchEventsResponse, callback: (err?: Error | null) => void): boolean {
    this.ids.push(message.event?.id ?? -1);
    if (!this.isStuck) callback();
    return !this.isStuck;
  }
  once(): unknown {
    return this;
  }
}

function event(detail: string): Omit<NewEventRecord, 'atMs'> {
  return { kind: 'credential.rotated', agentId: 'a1', hostId: 'h1', incarnation: 1, generation: 1, keyId: '', reason: 'due', detail };
}

async function setUp(store = new GatedStore(), maxQueuedPerWatcher?: number): Promise<{ store: GatedStore; log: EventLog; watchers: EventWatchers }> {
  const logger = new LogCapture().logger;
  const log = await EventLog.open({ store, clock: new FakeClock(), logger, retentionMs: 60_000, retentionCount: 100, pruneIntervalMs: 1_000 });
  const watchers = new EventWatchers({ log, logger, ...(maxQueuedPerWatcher === undefined ? {} : { maxQueuedPerWatcher }) });
  return { store, log, watchers };
}

describe('EventWatchers', () => {
  it('a resuming watcher gets events committed during its catch-up read once, then live ones, in order', async () => {
    const { store, log, watchers } = await setUp();
    for (let i = 1; i <= 5; i++) log.record(event(`e${i}`));
    await log.flush();
    store.isGated = true;
    const stream = new FakeStream();
    const stop = new AbortController();
    const watching = watchers.watch({ filter: ANY_EVENT, afterId: 2 }, stream, stop.signal);
    await waitUntil(() => store.readsWaiting === 1, 'the catch-up read in flight');
    // Committed (and handed to live listeners) while the read waits: the watcher is not live yet.
    for (let i = 6; i <= 8; i++) log.record(event(`e${i}`));
    await log.flush();
    store.release();
    await waitUntil(() => stream.ids.length === 6, 'the catch-up');
    for (let i = 9; i <= 10; i++) log.record(event(`e${i}`));
    await log.flush();
    await waitUntil(() => stream.ids.length === 8, 'the live events');
    expect(stream.ids).toEqual([3, 4, 5, 6, 7, 8, 9, 10]);
    stop.abort();
    await watching;
    expect(watchers.count).toBe(0);
  });

  it('refuses an id older than the oldest kept and one past the newest', async () => {
    const { log, watchers } = await setUp(new GatedStore());
    for (let i = 1; i <= 5; i++) log.record(event(`e${i}`));
    await log.flush();
    await log.store.pruneEvents(0, 2, 100);
    const stop = new AbortController();
    await expect(watchers.watch({ filter: ANY_EVENT, afterId: 2 }, new FakeStream(), stop.signal)).rejects.toThrow(OutOfRangeError);
    await expect(watchers.watch({ filter: ANY_EVENT, afterId: 2 }, new FakeStream(), stop.signal)).rejects.toThrow('the oldest event kept is 4');
    await expect(watchers.watch({ filter: ANY_EVENT, afterId: 6 }, new FakeStream(), stop.signal)).rejects.toThrow(/past the newest event, 5/);
    expect(watchers.count).toBe(0);
  });

  it('on a store two control planes share, resumes after an id only the other one wrote, and catches up on its events', async () => {
    const store = new GatedStore();
    const a = await setUp(store);
    const b = await setUp(store);
    for (let i = 1; i <= 3; i++) a.log.record(event(`a${i}`));
    await a.log.flush();
    // B wrote nothing yet: its own last id is 0, the store's is 3.
    expect(b.log.lastId).toBe(0);
    const resumed = new FakeStream();
    const fromStart = new FakeStream();
    const stop = new AbortController();
    const watching = [
      b.watchers.watch({ filter: ANY_EVENT, afterId: 3 }, resumed, stop.signal),
      b.watchers.watch({ filter: ANY_EVENT, afterId: 0 }, fromStart, stop.signal),
    ];
    await waitUntil(() => fromStart.ids.length === 3, "the catch-up on A's events");
    await waitUntil(() => b.watchers.count === 2, 'both watching');
    b.log.record(event('b4'));
    await b.log.flush();
    await waitUntil(() => resumed.ids.length === 1 && fromStart.ids.length === 4, "B's live event");
    expect(resumed.ids).toEqual([4]);
    expect(fromStart.ids).toEqual([1, 2, 3, 4]);
    await expect(b.watchers.watch({ filter: ANY_EVENT, afterId: 5 }, new FakeStream(), stop.signal)).rejects.toThrow(/past the newest event, 4/);
    stop.abort();
    await Promise.all(watching);
  });

  it('cuts a watcher whose stream never drains once its bound is reached, and no other', async () => {
    const { log, watchers } = await setUp(new GatedStore(), 4);
    const stuck = new FakeStream(true);
    const fine = new FakeStream();
    const stop = new AbortController();
    const stuckWatch = watchers.watch({ filter: ANY_EVENT, afterId: undefined }, stuck, stop.signal);
    const fineWatch = watchers.watch({ filter: ANY_EVENT, afterId: undefined }, fine, stop.signal);
    await waitUntil(() => watchers.count === 2, 'both watching');
    for (let i = 1; i <= 10; i++) log.record(event(`e${i}`));
    await log.flush();
    // One written (then the stream said it was full), four waiting: the fifth cut it.
    await expect(stuckWatch).rejects.toThrow(ResourceExhaustedError);
    expect(stuck.ids).toEqual([1]);
    expect(watchers.cutTotal).toBe(1);
    expect(watchers.peakQueued).toBe(4);
    expect(fine.ids).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    watchers.closeAll();
    await expect(fineWatch).rejects.toThrow(UnavailableError);
    expect(watchers.count).toBe(0);
  });

  it('writes events in one store write per turn, in order, and drops (counting) past its buffer bound', async () => {
    const store = new GatedStore();
    const logger = new LogCapture().logger;
    const log = await EventLog.open({ store, clock: new FakeClock(), logger, retentionMs: 60_000, retentionCount: 100, pruneIntervalMs: 1_000, maxPendingEvents: 3 });
    let writes = 0;
    const append = store.appendEvents.bind(store);
    store.appendEvents = (events) => {
      writes++;
      return append(events);
    };
    for (let i = 1; i <= 5; i++) log.record(event(`e${i}`));
    expect(log.pendingEvents).toBe(3);
    expect(log.droppedEvents).toBe(2);
    await log.flush();
    expect(writes).toBe(1);
    expect((await store.listEvents(0, 100, ANY_EVENT, 100)).map((e) => e.detail)).toEqual(['e1', 'e2', 'e3']);
    await log.close();
    log.record(event('after close'));
    expect(log.pendingEvents).toBe(0);
  });
});
