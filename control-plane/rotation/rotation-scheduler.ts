import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import { MIN_AUTO_ROTATIONS_PER_SECOND, neededRotationsPerSecond } from './rotation-policy.js';
import type { RotationReason } from './rotation-reason.js';

/** Options of {@link RotationScheduler}. */
export interface RotationSchedulerOptions {
  clock: Clock;
  logger: Logger;
  /**
   * Rotations per second at most; a storm is smoothed, never dropped. `auto`
   * sizes the cap from the need ({@link neededRotationsPerSecond} of the agents
   * scheduled, at least {@link MIN_AUTO_ROTATIONS_PER_SECOND}) as agents come
   * and go; a number is honoured, with a warning logged whenever it is below
   * the need (tokens would expire before their rotation).
   */
  maxPerSecond: number | 'auto';
  /** The lifetime of the tokens rotated: what the need is computed from. */
  tokenTtlMs: number;
  /**
   * Replaces the credential of `agentId`. Resolves once done (or once it is
   * known the agent needs no rotation); a rejection is logged and retried later.
   */
  rotate: (agentId: string, reason: RotationReason) => Promise<void>;
  /** Delay before a failed rotation is tried again. */
  retryDelayMs?: number;
  /**
   * Rotations running at once at most (default 1). More than one lets the
   * store commit their writes together (one fsync for many under
   * `synchronous = FULL`) instead of one after the other, and keeps the loop
   * busy while each waits for its commit.
   */
  maxInFlight?: number;
}

interface Entry {
  agentId: string;
  dueAtMs: number;
  expiresAtMs: number;
  reason: RotationReason;
}

/** An entry as a heap holds it, with its index in the heap's array (an entry is in at most one heap). */
interface HeapItem extends Entry {
  index: number;
}

/**
 * A binary min-heap ordered by `before`, holding at most one entry per agent:
 * a map from agent to its item (which knows its own index) makes replacing and
 * removing an agent's entry O(log n), so rescheduling (a host reconnecting over
 * and over) and unscheduling leave nothing behind. A swap moves the two indexes
 * kept on the items, not two map entries: with a map of positions, the swaps of
 * taking the soonest-due entry out of 100,000 were 15 % of the event loop in a
 * steady rotation run (issue 16's profile).
 */
class IndexedHeap {
  readonly #items: HeapItem[] = [];
  /** Each agent's item. */
  readonly #byAgent = new Map<string, HeapItem>();
  readonly #before: (a: Entry, b: Entry) => boolean;

  constructor(before: (a: Entry, b: Entry) => boolean) {
    this.#before = before;
  }

  get size(): number {
    return this.#items.length;
  }

  has(agentId: string): boolean {
    return this.#byAgent.has(agentId);
  }

  peek(): Entry | undefined {
    return this.#items[0];
  }

  /** The least `expiresAtMs` over every entry (Infinity when empty): a scan, for a scrape, never the hot path. */
  lowestExpiresAtMs(): number {
    let lowest = Infinity;
    for (const item of this.#items) if (item.expiresAtMs < lowest) lowest = item.expiresAtMs;
    return lowest;
  }

  /** Inserts `entry`, or replaces the entry of its agent in place (a decrease- or increase-key). */
  set(entry: Entry): void {
    const found = this.#byAgent.get(entry.agentId);
    if (found === undefined) {
      const item: HeapItem = { agentId: entry.agentId, dueAtMs: entry.dueAtMs, expiresAtMs: entry.expiresAtMs, reason: entry.reason, index: this.#items.length };
      this.#items.push(item);
      this.#byAgent.set(item.agentId, item);
      this.#siftUp(item.index);
      return;
    }
    found.dueAtMs = entry.dueAtMs;
    found.expiresAtMs = entry.expiresAtMs;
    found.reason = entry.reason;
    this.#siftDown(this.#siftUp(found.index));
  }

  pop(): Entry | undefined {
    const top = this.#items[0];
    if (top !== undefined) this.delete(top.agentId);
    return top;
  }

  /** Removes the entry of `agentId`; false when there is none. */
  delete(agentId: string): boolean {
    const item = this.#byAgent.get(agentId);
    if (item === undefined) return false;
    this.#byAgent.delete(agentId);
    const last = this.#items.pop() as HeapItem;
    if (item.index < this.#items.length) {
      this.#items[item.index] = last;
      last.index = item.index;
      this.#siftDown(this.#siftUp(item.index));
    }
    return true;
  }

  /** Moves the item at `i` up while it goes before its parent; returns where it ends. */
  #siftUp(i: number): number {
    const items = this.#items;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(items[i] as HeapItem, items[parent] as HeapItem)) break;
      this.#swap(i, parent);
      i = parent;
    }
    return i;
  }

  #siftDown(i: number): void {
    const items = this.#items;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < items.length && this.#before(items[left] as HeapItem, items[smallest] as HeapItem)) smallest = left;
      if (right < items.length && this.#before(items[right] as HeapItem, items[smallest] as HeapItem)) smallest = right;
      if (smallest === i) return;
      this.#swap(i, smallest);
      i = smallest;
    }
  }

  #swap(i: number, j: number): void {
    const items = this.#items;
    const a = items[i] as HeapItem;
    const b = items[j] as HeapItem;
    items[i] = b;
    items[j] = a;
    b.index = i;
    a.index = j;
  }
}

/**
 * Lifecycle of a {@link RotationScheduler}.
 * - `open`: schedules, and rotates once started.
 * - `closed`: `close()` was called; the loop ends after the rotation in progress.
 */
export type RotationSchedulerState = 'open' | 'closed';

/**
 * Replaces agent credentials when they fall due: soonest-expiring first among
 * those due, under a cap on signing rate, driven by the injected clock. One
 * entry per agent; scheduling again replaces it.
 */
export class RotationScheduler {
  readonly #options: RotationSchedulerOptions;
  /** Entries not due yet, by due time. An agent is in at most one of the two heaps. */
  readonly #byDue = new IndexedHeap((a, b) => a.dueAtMs < b.dueAtMs);
  /** Due entries by expiry, soonest first. */
  readonly #ready = new IndexedHeap((a, b) => a.expiresAtMs < b.expiresAtMs);
  #state: RotationSchedulerState = 'open';
  /**
   * The loop's current sleep, made for that one sleep and dropped after it: `close()` aborts it, and
   * so does `schedule()` when `#isWakeable`. One controller per sleep rather than a signal combined
   * with a long-lived one: on Node 20 every `AbortSignal.any` leaves a dependant on its sources for
   * good (1M wakes ≈ 60 MB).
   */
  #sleep: AbortController | undefined;
  /** True while the loop sleeps for lack of anything due (not for signing budget). */
  #isWakeable = false;
  #loop: Promise<void> | undefined;
  /** Rotations running now; each settles without rejecting. */
  readonly #inFlight = new Set<Promise<void>>();
  /** Wakes the loop when it waits for a rotation to finish (all maxInFlight were running). */
  #onSlotFreed: (() => void) | undefined;
  #budget: number;
  #budgetAtMs: number;
  /** True while a configured cap below the need has been warned about (warned again only after it sufficed). */
  #isCapWarned = false;

  constructor(options: RotationSchedulerOptions) {
    this.#options = options;
    this.#budget = options.maxPerSecond === 'auto' ? MIN_AUTO_ROTATIONS_PER_SECOND : options.maxPerSecond;
    this.#budgetAtMs = options.clock.now();
  }

  /** The signing-rate cap in force now: the configured one, or for `auto` the one the scheduled agents need. */
  get maxPerSecond(): number {
    const { maxPerSecond, tokenTtlMs } = this.#options;
    if (maxPerSecond !== 'auto') return maxPerSecond;
    return Math.max(MIN_AUTO_ROTATIONS_PER_SECOND, neededRotationsPerSecond(this.size, tokenTtlMs));
  }

  /** Starts the loop. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** Schedules (or reschedules) the rotation of `agentId`; `reason` is what it is counted as once done. */
  schedule(agentId: string, dueAtMs: number, expiresAtMs: number, reason: RotationReason = 'due'): void {
    this.#ready.delete(agentId);
    this.#byDue.set({ agentId, dueAtMs, expiresAtMs, reason });
    this.#checkCap();
    if (this.#isWakeable) this.#sleep?.abort();
  }

  /** Warns (once per crossing) when a configured cap is below what the scheduled agents need. */
  #checkCap(): void {
    const { maxPerSecond, tokenTtlMs, logger } = this.#options;
    if (maxPerSecond === 'auto') return;
    const neededPerSecond = neededRotationsPerSecond(this.size, tokenTtlMs);
    if (maxPerSecond >= neededPerSecond) {
      // Some slack before warning again: rotations in flight are out of `size`, which makes the need flicker at the edge.
      if (maxPerSecond >= neededPerSecond * 1.1) this.#isCapWarned = false;
      return;
    }
    if (this.#isCapWarned) return;
    this.#isCapWarned = true;
    logger.warn(
      { maxPerSecond, neededPerSecond, agents: this.size, ttlMs: tokenTtlMs },
      'the rotation rate cap (--max-rotations-per-second) is too low to keep every agent token fresh; raise it or use "auto"',
    );
  }

  /** Forgets `agentId` (stopped, or its host went away). */
  unschedule(agentId: string): void {
    if (!this.#byDue.delete(agentId)) this.#ready.delete(agentId);
    this.#checkCap();
  }

  /** How many agents are scheduled. */
  get size(): number {
    return this.#byDue.size + this.#ready.size;
  }

  /**
   * Entries held by both heaps together: one per scheduled agent, whatever was
   * rescheduled or unscheduled before. For tests.
   * @internal
   */
  get heapSize(): number {
    return this.#byDue.size + this.#ready.size;
  }

  /**
   * The soonest expiry (ms since the epoch) of the tokens of the agents scheduled, Infinity when
   * none is: O(agents scheduled), for a metrics scrape. Rotations in flight are not counted.
   */
  lowestExpiresAtMs(): number {
    return Math.min(this.#byDue.lowestExpiresAtMs(), this.#ready.lowestExpiresAtMs());
  }

  /** Rotations due and waiting for the signing budget or a free slot: above 0 for long, the cap is what holds them. */
  get dueWaiting(): number {
    return this.#ready.size;
  }

  /** The scheduler's lifecycle state. */
  get state(): RotationSchedulerState {
    return this.#state;
  }

  /**
   * True when nothing is due at the clock's current time and no rotation is
   * running: everything that time has made due so far is done. For tests on a
   * fake clock, to know when the control plane has caught up.
   */
  isSettled(): boolean {
    if (this.#inFlight.size > 0) return false;
    const next = this.#byDue.peek();
    return this.#ready.size === 0 && (next === undefined || next.dueAtMs > this.#options.clock.now());
  }

  /** Stops the loop and waits for the rotations in progress. Idempotent. */
  async close(): Promise<void> {
    this.#state = 'closed';
    this.#sleep?.abort();
    await this.#loop;
  }

  #isScheduled(agentId: string): boolean {
    return this.#byDue.has(agentId) || this.#ready.has(agentId);
  }

  /** Moves every entry due at `nowMs` into the ready heap. */
  #promoteDue(nowMs: number): void {
    for (let top = this.#byDue.peek(); top !== undefined && top.dueAtMs <= nowMs; top = this.#byDue.peek()) {
      this.#byDue.pop();
      this.#ready.set(top);
    }
  }

  /** Sleeps `ms` on the clock, or until `close()` (or, if `isWakeable`, `schedule()`) cuts it short. */
  async #sleepFor(ms: number, isWakeable: boolean): Promise<void> {
    const sleep = new AbortController();
    this.#sleep = sleep;
    this.#isWakeable = isWakeable;
    try {
      await this.#options.clock.sleep(ms, sleep.signal);
    } finally {
      this.#sleep = undefined;
      this.#isWakeable = false;
    }
  }

  async #run(): Promise<void> {
    const { clock } = this.#options;
    while (this.#state === 'open') {
      const nowMs = clock.now();
      this.#promoteDue(nowMs);
      if (this.#ready.size === 0) {
        const next = this.#byDue.peek();
        await this.#sleepFor(next === undefined ? 3_600_000 : next.dueAtMs - nowMs, true);
        continue;
      }
      // The budget is waited for before an entry is chosen, never while holding one: whatever falls
      // due meanwhile competes on expiry with what was waiting (a held entry would go first even if
      // one expiring sooner fell due during the wait; found by the scheduler's property test).
      const budgetWaitMs = this.#budgetWaitMs(nowMs);
      if (budgetWaitMs > 0) {
        await this.#sleepFor(budgetWaitMs, false);
        continue;
      }
      if (this.#inFlight.size >= (this.#options.maxInFlight ?? 1)) {
        await new Promise<void>((resolve) => {
          this.#onSlotFreed = resolve;
        });
        continue;
      }
      const entry = this.#ready.pop();
      if (entry === undefined) continue;
      this.#budget -= 1;
      const rotation = this.#rotate(entry).finally(() => {
        this.#inFlight.delete(rotation);
        const onSlotFreed = this.#onSlotFreed;
        this.#onSlotFreed = undefined;
        onSlotFreed?.();
      });
      this.#inFlight.add(rotation);
    }
    await Promise.all(this.#inFlight);
  }

  /** Runs one rotation; a failure is logged and the agent scheduled again after the retry delay. Never rejects. */
  async #rotate(entry: Entry): Promise<void> {
    const { clock, logger } = this.#options;
    try {
      await this.#options.rotate(entry.agentId, entry.reason);
    } catch (err) {
      logger.warn({ err, agentId: entry.agentId }, 'rotation failed; will retry');
      if (!this.#isScheduled(entry.agentId)) {
        this.schedule(entry.agentId, clock.now() + (this.#options.retryDelayMs ?? 1_000), entry.expiresAtMs, entry.reason);
      }
    }
  }

  /** Refills the token bucket up to `nowMs`; how long until it holds one token (0: it does now). */
  #budgetWaitMs(nowMs: number): number {
    const maxPerSecond = this.maxPerSecond;
    this.#budget = Math.min(maxPerSecond, this.#budget + ((nowMs - this.#budgetAtMs) * maxPerSecond) / 1000);
    this.#budgetAtMs = nowMs;
    return this.#budget >= 1 ? 0 : Math.ceil(((1 - this.#budget) * 1000) / maxPerSecond);
  }
}
