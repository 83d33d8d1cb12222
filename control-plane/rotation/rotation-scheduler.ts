import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';

/** Options of {@link RotationScheduler}. */
export interface RotationSchedulerOptions {
  clock: Clock;
  logger: Logger;
  /** Rotations per second at most; a storm is smoothed, never dropped. */
  maxPerSecond: number;
  /**
   * Replaces the credential of `agentId`. Resolves once done (or once it is
   * known the agent needs no rotation); a rejection is logged and retried later.
   */
  rotate: (agentId: string) => Promise<void>;
  /** Delay before a failed rotation is tried again. */
  retryDelayMs?: number;
  /**
   * Rotations running at once at most (default 1). More than one lets the
   * store commit their writes together (one fsync for many under
   * `synchronous = FULL`) instead of one after the other.
   */
  maxInFlight?: number;
}

interface Entry {
  agentId: string;
  dueAtMs: number;
  expiresAtMs: number;
}

/** A binary min-heap ordered by `before`. */
class Heap<T> {
  readonly #items: T[] = [];
  readonly #before: (a: T, b: T) => boolean;

  constructor(before: (a: T, b: T) => boolean) {
    this.#before = before;
  }

  get size(): number {
    return this.#items.length;
  }

  peek(): T | undefined {
    return this.#items[0];
  }

  push(item: T): void {
    const items = this.#items;
    items.push(item);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(items[i] as T, items[parent] as T)) break;
      [items[i], items[parent]] = [items[parent] as T, items[i] as T];
      i = parent;
    }
  }

  pop(): T | undefined {
    const items = this.#items;
    const top = items[0];
    const last = items.pop();
    if (items.length > 0 && last !== undefined) {
      items[0] = last;
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        const right = left + 1;
        let smallest = i;
        if (left < items.length && this.#before(items[left] as T, items[smallest] as T)) smallest = left;
        if (right < items.length && this.#before(items[right] as T, items[smallest] as T)) smallest = right;
        if (smallest === i) break;
        [items[i], items[smallest]] = [items[smallest] as T, items[i] as T];
        i = smallest;
      }
    }
    return top;
  }
}

/**
 * Replaces agent credentials when they fall due: soonest-expiring first among
 * those due, under a cap on signing rate, driven by the injected clock. One
 * entry per agent; scheduling again replaces it.
 */
export class RotationScheduler {
  readonly #options: RotationSchedulerOptions;
  readonly #entries = new Map<string, Entry>();
  /** Entries by due time; stale ones (replaced or removed) are skipped when popped. */
  readonly #byDue = new Heap<Entry>((a, b) => a.dueAtMs < b.dueAtMs);
  /** Due entries by expiry, soonest first. */
  readonly #ready = new Heap<Entry>((a, b) => a.expiresAtMs < b.expiresAtMs);
  readonly #closing = new AbortController();
  #wake = new AbortController();
  #loop: Promise<void> | undefined;
  /** Rotations running now; each settles without rejecting. */
  readonly #inFlight = new Set<Promise<void>>();
  /** Wakes the loop when it waits for a rotation to finish (all maxInFlight were running). */
  #onSlotFreed: (() => void) | undefined;
  #budget: number;
  #budgetAtMs: number;

  constructor(options: RotationSchedulerOptions) {
    this.#options = options;
    this.#budget = options.maxPerSecond;
    this.#budgetAtMs = options.clock.now();
  }

  /** Starts the loop. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** Schedules (or reschedules) the rotation of `agentId`. */
  schedule(agentId: string, dueAtMs: number, expiresAtMs: number): void {
    const entry = { agentId, dueAtMs, expiresAtMs };
    this.#entries.set(agentId, entry);
    this.#byDue.push(entry);
    this.#wake.abort();
  }

  /** Forgets `agentId` (stopped, or its host went away). */
  unschedule(agentId: string): void {
    this.#entries.delete(agentId);
  }

  /** How many agents are scheduled. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * True when nothing is due at the clock's current time and no rotation is
   * running: everything that time has made due so far is done. For tests on a
   * fake clock, to know when the control plane has caught up.
   */
  isSettled(): boolean {
    if (this.#inFlight.size > 0) return false;
    const nowMs = this.#options.clock.now();
    this.#dropStale();
    const next = this.#byDue.peek();
    return this.#ready.size === 0 && (next === undefined || next.dueAtMs > nowMs);
  }

  /** Stops the loop and waits for the rotations in progress. Idempotent. */
  async close(): Promise<void> {
    this.#closing.abort();
    await this.#loop;
  }

  #dropStale(): void {
    for (let top = this.#byDue.peek(); top !== undefined && this.#entries.get(top.agentId) !== top; top = this.#byDue.peek()) {
      this.#byDue.pop();
    }
  }

  /** Moves every entry due at `nowMs` into the ready heap, and drops replaced or removed ones from the top of both. */
  #promoteDue(nowMs: number): void {
    this.#dropStale();
    for (let top = this.#byDue.peek(); top !== undefined && top.dueAtMs <= nowMs; top = this.#byDue.peek()) {
      this.#byDue.pop();
      if (this.#entries.get(top.agentId) === top) this.#ready.push(top);
      this.#dropStale();
    }
    for (let top = this.#ready.peek(); top !== undefined && this.#entries.get(top.agentId) !== top; top = this.#ready.peek()) {
      this.#ready.pop();
    }
  }

  async #run(): Promise<void> {
    const { clock } = this.#options;
    const signal = this.#closing.signal;
    while (!signal.aborted) {
      const nowMs = clock.now();
      this.#promoteDue(nowMs);
      if (this.#ready.peek() === undefined) {
        const next = this.#byDue.peek();
        this.#wake = new AbortController();
        const waitMs = next === undefined ? 3_600_000 : next.dueAtMs - nowMs;
        await clock.sleep(waitMs, AbortSignal.any([signal, this.#wake.signal]));
        continue;
      }
      // The budget is waited for before an entry is chosen, never while holding one: whatever falls
      // due meanwhile competes on expiry with what was waiting (a held entry would go first even if
      // one expiring sooner fell due during the wait; found by the scheduler's property test).
      const budgetWaitMs = this.#budgetWaitMs(nowMs);
      if (budgetWaitMs > 0) {
        await clock.sleep(budgetWaitMs, signal);
        continue;
      }
      if (this.#inFlight.size >= (this.#options.maxInFlight ?? 1)) {
        await new Promise<void>((resolve) => {
          this.#onSlotFreed = resolve;
        });
        continue;
      }
      const entry = this.#ready.pop();
      if (entry === undefined || this.#entries.get(entry.agentId) !== entry) continue;
      this.#budget -= 1;
      this.#entries.delete(entry.agentId);
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
      await this.#options.rotate(entry.agentId);
    } catch (err) {
      logger.warn({ err, agentId: entry.agentId }, 'rotation failed; will retry');
      if (!this.#entries.has(entry.agentId)) {
        this.schedule(entry.agentId, clock.now() + (this.#options.retryDelayMs ?? 1_000), entry.expiresAtMs);
      }
    }
  }

  /** Refills the token bucket up to `nowMs`; how long until it holds one token (0: it does now). */
  #budgetWaitMs(nowMs: number): number {
    const { maxPerSecond } = this.#options;
    this.#budget = Math.min(maxPerSecond, this.#budget + ((nowMs - this.#budgetAtMs) * maxPerSecond) / 1000);
    this.#budgetAtMs = nowMs;
    return this.#budget >= 1 ? 0 : Math.ceil(((1 - this.#budget) * 1000) / maxPerSecond);
  }
}
