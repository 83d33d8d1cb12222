/**
 * StreamWriter on a real Node stream: an object-mode Writable with a small
 * highWaterMark whose reader is as slow as the test wants (each `_write` holds
 * its callback until the test lets it go), standing for a host that reads
 * slowly. Backpressure is what keeps a slow host from making the control plane
 * buffer without bound (ARCHITECTURE.md, "The stream": limits, backpressure).
 */
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { StreamWriter } from '../../common/stream-writer.js';

const MIB = 1024 * 1024;
/** Event-loop turns a step may take before it is a hang. */
const MAX_TURNS = 1_000;

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A Writable that takes each chunk only when the test releases it. */
class SlowReader<T> {
  readonly received: T[] = [];
  /** The most the stream held at once (in `_write` plus buffered). */
  maxHeld = 0;
  readonly #pending: (() => void)[] = [];
  readonly stream: Writable;

  constructor(highWaterMark: number) {
    this.stream = new Writable({
      objectMode: true,
      highWaterMark,
      write: (chunk: T, _encoding, callback): void => {
        this.maxHeld = Math.max(this.maxHeld, this.stream.writableLength);
        this.#pending.push(() => {
          this.received.push(chunk);
          callback();
        });
      },
    });
  }

  /** Chunks handed to `_write` and not released yet (a Writable hands over one at a time). */
  get inHand(): number {
    return this.#pending.length;
  }

  /** Lets the chunk in hand through, then gives the stream a turn to hand over the next (and emit drain). */
  async releaseOne(): Promise<void> {
    const next = this.#pending.shift();
    if (next === undefined) throw new Error('nothing to release');
    next();
    await turn();
  }

  /** Releases chunks until `predicate()` holds; bounded in turns. */
  async releaseUntil(predicate: () => boolean, what: string): Promise<void> {
    for (let i = 0; i < MAX_TURNS; i++) {
      if (predicate()) return;
      if (this.inHand > 0) await this.releaseOne();
      else await turn();
    }
    throw new Error(`never reached: ${what}`);
  }
}

describe('StreamWriter', () => {
  const writers: StreamWriter<unknown>[] = [];
  afterEach(() => {
    for (const writer of writers.splice(0)) writer.close();
  });

  function writerFor<T>(reader: SlowReader<T>, options: ConstructorParameters<typeof StreamWriter<T>>[1] = {}): StreamWriter<T> {
    const writer = new StreamWriter<T>(reader.stream, options);
    writers.push(writer as StreamWriter<unknown>);
    return writer;
  }

  it('stops writing when write() returns false and goes on, in order, only after drain', async () => {
    const reader = new SlowReader<number>(2);
    const writer = writerFor(reader);
    for (let i = 1; i <= 6; i++) writer.write(i);

    // The stream took 1 (in hand) and 2 (buffered: write() said false); the rest waits in the writer.
    expect(reader.stream.writableLength).toBe(2);
    expect(writer.queued).toBe(4);
    expect(reader.stream.writableNeedDrain).toBe(true);

    // Releasing the chunk in hand lets the stream take 2 but not yet drain: still nothing more is written.
    await reader.releaseOne();
    expect(reader.received).toEqual([1]);
    expect(writer.queued).toBe(4);

    await reader.releaseUntil(() => reader.received.length === 6, 'all six read');
    expect(reader.received).toEqual([1, 2, 3, 4, 5, 6]);
    expect(writer.queued).toBe(0);
    // Never more in the stream than its highWaterMark: the writer held the rest.
    expect(reader.maxHeld).toBeLessThanOrEqual(2);
  });

  it('resolves whenBelow only once fewer than that many messages wait', async () => {
    const reader = new SlowReader<number>(2);
    const writer = writerFor(reader);
    for (let i = 1; i <= 6; i++) writer.write(i);
    expect(writer.queued).toBe(4);

    let isResolved = false;
    const below = writer.whenBelow(2).then(() => {
      isResolved = true;
    });
    await writer.whenBelow(5);
    for (let i = 0; i < MAX_TURNS && writer.queued >= 2; i++) {
      await turn();
      expect(isResolved, `resolved with ${writer.queued} waiting`).toBe(false);
      await reader.releaseOne();
    }
    expect(writer.queued).toBeLessThan(2);
    await below;
    expect(isResolved).toBe(true);
  });

  it('holds at most its byte bound, counting what the stream has not flushed, and refuses past it', async () => {
    const reader = new SlowReader<Buffer>(2);
    const writer = writerFor(reader, { sizeOf: (b) => b.length });
    const bounds = { maxBufferedBytes: 3 * MIB };
    const payload = (n: number): Buffer => Buffer.alloc(MIB, n);

    expect(writer.offer(payload(1), bounds)).toBe(true);
    expect(writer.offer(payload(2), bounds)).toBe(true);
    expect(writer.offer(payload(3), bounds)).toBe(true);
    // Two in the stream (one in hand, one buffered), one queued here: the bound is reached.
    expect(writer.bufferedBytes).toBe(3 * MIB);
    expect(writer.offer(payload(4), bounds)).toBe(false);
    expect(writer.bufferedBytes).toBe(3 * MIB);

    let hasRoom = false;
    const room = writer.whenRoomFor(MIB, bounds).then(() => {
      hasRoom = true;
    });
    await turn();
    expect(hasRoom).toBe(false);

    // The reader takes one megabyte: room for one more, and no more than that.
    await reader.releaseOne();
    await room;
    expect(writer.bufferedBytes).toBe(2 * MIB);
    expect(writer.offer(payload(4), bounds)).toBe(true);
    expect(writer.offer(payload(5), bounds)).toBe(false);

    await reader.releaseUntil(() => reader.received.length === 4, 'four read');
    expect(reader.received.map((b) => b[0])).toEqual([1, 2, 3, 4]);
    expect(writer.bufferedBytes).toBe(0);
  });

  it('takes one message larger than the bound when nothing is buffered, so delivery never stalls', async () => {
    const reader = new SlowReader<Buffer>(2);
    const writer = writerFor(reader, { sizeOf: (b) => b.length });
    const bounds = { maxBufferedBytes: MIB };
    expect(writer.offer(Buffer.alloc(2 * MIB), bounds)).toBe(true);
    expect(writer.offer(Buffer.alloc(1), bounds)).toBe(false);
    await reader.releaseUntil(() => reader.received.length === 1, 'the large one read');
    await writer.whenRoomFor(1, bounds);
    expect(writer.offer(Buffer.alloc(1), bounds)).toBe(true);
  });

  it('refuses an offer past its message bound, while write() still queues', () => {
    const reader = new SlowReader<number>(1);
    const writer = writerFor(reader);
    const bounds = { maxQueued: 2 };
    // 1 goes to the stream (write() false at once with a highWaterMark of 1); 2 and 3 wait here.
    expect(writer.offer(1, bounds)).toBe(true);
    expect(writer.offer(2, bounds)).toBe(true);
    expect(writer.offer(3, bounds)).toBe(true);
    expect(writer.queued).toBe(2);
    expect(writer.offer(4, bounds)).toBe(false);
    writer.write(5);
    expect(writer.queued).toBe(3);
  });

  it('on close drops what waits, wakes every waiter and counts nothing flushed afterwards', async () => {
    const reader = new SlowReader<Buffer>(2);
    const writer = writerFor(reader, { sizeOf: (b) => b.length });
    const bounds = { maxBufferedBytes: MIB };
    for (let i = 0; i < 4; i++) writer.write(Buffer.alloc(MIB));
    const waiters = [writer.whenBelow(1), writer.whenRoomFor(MIB, bounds)];
    writer.close();
    await Promise.all(waiters);
    expect(writer.queued).toBe(0);
    expect(writer.bufferedBytes).toBe(0);
    await reader.releaseUntil(() => reader.inHand === 0 && reader.stream.writableLength === 0, 'the stream emptied');
    expect(writer.bufferedBytes).toBe(0);
    expect(writer.offer(Buffer.alloc(1), bounds)).toBe(false);
  });
});
