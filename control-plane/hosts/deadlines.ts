import type { Clock } from '../../common/clock.js';

/**
 * Something to do at a time, kept by {@link Deadlines}. The object is its own
 * entry (no wrapper, no closure): each connected host's session holds a couple
 * of these for as long as it is connected, so they are kept small.
 */
export interface Deadline {
  /** When it falls due (the clock's milliseconds); set by {@link Deadlines.set}. */
  dueAtMs: number;
  /** Its place in the heap, or -1 when not scheduled; owned by {@link Deadlines}. */
  heapIndex: number;
  /** Called once it falls due (it is no longer scheduled then); must not throw. */
  fire(nowMs: number): void;
}

/**
 * Every host session's timed work (its pings, its credential's rotation) on
 * one clock wait for the whole control plane, rather than a sleeping loop per
 * session and task (an async frame, a promise, a timer and an abort listener
 * each, about half a KiB, times two, times every connected host). A binary
 * min-heap on due time, each entry knowing its index, so a session that goes
 * takes its entries out at once (nothing of it stays until its next due time).
 * The one wait runs only while something is scheduled: with nothing to do, no
 * timer is left behind.
 */
export class Deadlines {
  readonly #clock: Clock;
  readonly #heap: Deadline[] = [];
  /** Wakes the running wait early: aborted when an earlier deadline arrives or the heap empties. */
  #wake: AbortController | undefined;
  /** When the running wait ends, if one runs. */
  #waitingUntilMs: number | undefined;
  #isRunning = false;
  readonly #onError: (err: unknown) => void;

  constructor(clock: Clock, onError: (err: unknown) => void) {
    this.#clock = clock;
    this.#onError = onError;
  }

  /** Deadlines scheduled. */
  get size(): number {
    return this.#heap.length;
  }

  /** Schedules `deadline` at `dueAtMs` (moving it if it was already scheduled). */
  set(deadline: Deadline, dueAtMs: number): void {
    deadline.dueAtMs = dueAtMs;
    if (deadline.heapIndex < 0) {
      deadline.heapIndex = this.#heap.length;
      this.#heap.push(deadline);
    }
    this.#siftUp(deadline.heapIndex);
    this.#siftDown(deadline.heapIndex);
    if (!this.#isRunning) {
      this.#isRunning = true;
      this.#run().catch(this.#onError);
    } else if (this.#waitingUntilMs !== undefined && dueAtMs < this.#waitingUntilMs) this.#wake?.abort();
  }

  /** Unschedules `deadline` (nothing if it was not scheduled). */
  delete(deadline: Deadline): void {
    const index = deadline.heapIndex;
    if (index < 0) return;
    deadline.heapIndex = -1;
    const last = this.#heap.pop() as Deadline;
    if (last !== deadline) {
      this.#heap[index] = last;
      last.heapIndex = index;
      this.#siftUp(index);
      this.#siftDown(last.heapIndex);
    }
    // Nothing left to wait for: the wait ends now rather than holding a timer until it would have.
    if (this.#heap.length === 0) this.#wake?.abort();
  }

  /** Unschedules everything (shutdown). */
  clear(): void {
    for (const deadline of this.#heap) deadline.heapIndex = -1;
    this.#heap.length = 0;
    this.#wake?.abort();
  }

  async #run(): Promise<void> {
    try {
      for (;;) {
        const next = this.#heap[0];
        if (next === undefined) return;
        const nowMs = this.#clock.now();
        if (next.dueAtMs <= nowMs) {
          this.delete(next);
          try {
            next.fire(nowMs);
          } catch (err) {
            this.#onError(err);
          }
          continue;
        }
        const wake = new AbortController();
        this.#wake = wake;
        this.#waitingUntilMs = next.dueAtMs;
        await this.#clock.sleep(next.dueAtMs - nowMs, wake.signal);
        this.#wake = undefined;
        this.#waitingUntilMs = undefined;
      }
    } finally {
      this.#isRunning = false;
    }
  }

  #siftUp(index: number): void {
    const heap = this.#heap;
    const item = heap[index] as Deadline;
    while (index > 0) {
      const parentIndex = (index - 1) >> 1;
      const parent = heap[parentIndex] as Deadline;
      if (parent.dueAtMs <= item.dueAtMs) break;
      heap[index] = parent;
      parent.heapIndex = index;
      index = parentIndex;
    }
    heap[index] = item;
    item.heapIndex = index;
  }

  #siftDown(index: number): void {
    const heap = this.#heap;
    const item = heap[index] as Deadline;
    const length = heap.length;
    for (;;) {
      const left = 2 * index + 1;
      if (left >= length) break;
      const right = left + 1;
      const child = right < length && (heap[right] as Deadline).dueAtMs < (heap[left] as Deadline).dueAtMs ? right : left;
      const childItem = heap[child] as Deadline;
      if (childItem.dueAtMs >= item.dueAtMs) break;
      heap[index] = childItem;
      childItem.heapIndex = index;
      index = child;
    }
    heap[index] = item;
    item.heapIndex = index;
  }
}
