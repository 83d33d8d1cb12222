/** The part of a writable stream {@link StreamWriter} uses. */
export interface WritableLike<T> {
  /** Node's `Writable.write`: false once the stream's buffer is full; `callback` runs once the stream has flushed `message`. */
  write(message: T, callback: (err?: Error | null) => void): boolean;
  once(event: 'drain', listener: () => void): unknown;
}

/** Options of {@link StreamWriter}. */
export interface StreamWriterOptions<T> {
  /** The bytes a message takes, for byte bounds. Default: 0 for every message. */
  sizeOf?: (message: T) => number;
}

/** Bounds an {@link StreamWriter.offer} must stay within. */
export interface WriteBounds {
  /** Messages waiting in the writer. Default: no bound. */
  maxQueued?: number;
  /** Bytes buffered (see {@link StreamWriter.bufferedBytes}). Default: no bound. */
  maxBufferedBytes?: number;
}

/**
 * Writes messages to a stream in the order given, and stops writing whenever
 * the stream reports a full buffer (`write()` false) until it emits `drain`.
 * What waits is counted, in messages and in bytes, so a caller can bound it:
 * {@link write} always queues (for small control messages that must not be
 * refused), {@link offer} queues only within the bounds, and
 * {@link whenRoomFor} waits until an offer would be taken.
 */
export class StreamWriter<T> {
  readonly #stream: WritableLike<T>;
  readonly #sizeOf: (message: T) => number;
  readonly #queue: { message: T; bytes: number }[] = [];
  #head = 0;
  /** Bytes in `#queue` past `#head`, plus bytes written to the stream and not yet flushed by it. */
  #bufferedBytes = 0;
  #isBlocked = false;
  #isClosed = false;
  #waiters: { isReady: () => boolean; resolve: () => void }[] = [];

  constructor(stream: WritableLike<T>, options: StreamWriterOptions<T> = {}) {
    this.#stream = stream;
    this.#sizeOf = options.sizeOf ?? ((): number => 0);
  }

  /** Messages waiting for the stream to drain. */
  get queued(): number {
    return this.#queue.length - this.#head;
  }

  /**
   * Bytes this writer holds or has handed to the stream and the stream has not
   * flushed yet (its write callback has not run): what a slow reader makes pile
   * up, here and in the stream's own buffer.
   */
  get bufferedBytes(): number {
    return this.#bufferedBytes;
  }

  /** Queues `message` whatever the bounds; dropped once closed. */
  write(message: T): void {
    if (this.#isClosed) return;
    this.#enqueue(message, this.#sizeOf(message));
  }

  /**
   * Queues `message` if it fits within `bounds` and returns true; returns false
   * and queues nothing otherwise (or once closed). A message is always taken
   * when nothing is buffered, so one larger than the byte bound still goes, alone.
   */
  offer(message: T, bounds: WriteBounds): boolean {
    if (this.#isClosed) return false;
    const bytes = this.#sizeOf(message);
    if (!this.#hasRoomFor(bytes, bounds)) return false;
    this.#enqueue(message, bytes);
    return true;
  }

  /** Resolves once an {@link offer} of a message of `bytes` within `bounds` would be taken (at once if it would now), or once closed. */
  whenRoomFor(bytes: number, bounds: WriteBounds): Promise<void> {
    return this.#when(() => this.#hasRoomFor(bytes, bounds));
  }

  /** Resolves once fewer than `below` messages wait (at once if that holds now, or once closed). */
  whenBelow(below: number): Promise<void> {
    return this.#when(() => this.queued < below);
  }

  /** Drops what waits and writes nothing more. Idempotent. */
  close(): void {
    this.#isClosed = true;
    this.#queue.length = 0;
    this.#head = 0;
    this.#bufferedBytes = 0;
    this.#wakeWaiters();
  }

  #hasRoomFor(bytes: number, bounds: WriteBounds): boolean {
    if (this.queued >= (bounds.maxQueued ?? Infinity)) return false;
    return this.#bufferedBytes === 0 || this.#bufferedBytes + bytes <= (bounds.maxBufferedBytes ?? Infinity);
  }

  #when(isReady: () => boolean): Promise<void> {
    if (this.#isClosed || isReady()) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ isReady, resolve }));
  }

  #enqueue(message: T, bytes: number): void {
    this.#queue.push({ message, bytes });
    this.#bufferedBytes += bytes;
    this.#pump();
  }

  #wakeWaiters(): void {
    if (this.#waiters.length === 0) return;
    const ready = this.#waiters.filter((w) => this.#isClosed || w.isReady());
    if (ready.length === 0) return;
    this.#waiters = this.#waiters.filter((w) => !ready.includes(w));
    for (const waiter of ready) waiter.resolve();
  }

  #pump(): void {
    if (this.#isBlocked) return;
    while (this.#head < this.#queue.length && !this.#isClosed) {
      const { message, bytes } = this.#queue[this.#head] as { message: T; bytes: number };
      this.#queue[this.#head] = undefined as unknown as { message: T; bytes: number };
      this.#head++;
      const hasRoom = this.#stream.write(message, () => {
        // After close() the count restarted from 0: what was written before is no longer counted.
        if (this.#isClosed) return;
        this.#bufferedBytes -= bytes;
        this.#wakeWaiters();
      });
      if (!hasRoom) {
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
