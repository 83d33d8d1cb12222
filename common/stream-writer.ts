/** The part of a writable stream {@link StreamWriter} uses. */
export interface WritableLike<T> {
  write(message: T): boolean;
  once(event: 'drain', listener: () => void): unknown;
}

/**
 * Writes messages to a stream in the order given, and stops writing whenever
 * the stream reports a full buffer (`write()` false) until it emits `drain`.
 * What waits is counted, so a caller can bound it.
 */
export class StreamWriter<T> {
  readonly #stream: WritableLike<T>;
  readonly #queue: T[] = [];
  #head = 0;
  #isBlocked = false;
  #isClosed = false;
  #roomWaiters: { below: number; resolve: () => void }[] = [];

  constructor(stream: WritableLike<T>) {
    this.#stream = stream;
  }

  /** Messages waiting for the stream to drain. */
  get queued(): number {
    return this.#queue.length - this.#head;
  }

  /** Queues `message`; dropped once closed. */
  write(message: T): void {
    if (this.#isClosed) return;
    this.#queue.push(message);
    this.#pump();
  }

  /** Resolves once fewer than `below` messages wait (at once if that holds now, or once closed). */
  whenBelow(below: number): Promise<void> {
    if (this.queued < below || this.#isClosed) return Promise.resolve();
    return new Promise((resolve) => this.#roomWaiters.push({ below, resolve }));
  }

  /** Drops what waits and writes nothing more. Idempotent. */
  close(): void {
    this.#isClosed = true;
    this.#queue.length = 0;
    this.#head = 0;
    this.#wakeWaiters();
  }

  #wakeWaiters(): void {
    if (this.#roomWaiters.length === 0) return;
    const queued = this.queued;
    const ready = this.#roomWaiters.filter((w) => this.#isClosed || queued < w.below);
    this.#roomWaiters = this.#roomWaiters.filter((w) => !ready.includes(w));
    for (const waiter of ready) waiter.resolve();
  }

  #pump(): void {
    if (this.#isBlocked) return;
    while (this.#head < this.#queue.length && !this.#isClosed) {
      const message = this.#queue[this.#head] as T;
      this.#queue[this.#head] = undefined as T;
      this.#head++;
      if (!this.#stream.write(message)) {
        this.#isBlocked = true;
        this.#stream.once('drain', () => {
          this.#isBlocked = false;
          this.#pump();
        });
        break;
      }
    }
    if (this.#head === this.#queue.length) {
      this.#queue.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
    this.#wakeWaiters();
  }
}
