/**
 * What delivery may hold in memory, in bytes, with 1 MiB payloads: the
 * read-ahead (messages read from the store for later deliveries, all agents
 * together) and what one slow host's stream buffers. On a real SQLite store
 * and a real Node stream under a HostSession; the stream's reader is as slow
 * as the test wants (each chunk is held until the test lets it go).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { DeliveryManager, type DeliveryManagerOptions } from '../../../control-plane/delivery/delivery-manager.js';
import { ControlPlaneEvents } from '../../../control-plane/events.js';
import { HostSession } from '../../../control-plane/hosts/host-session.js';
import { databasePath, SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { Hello, type ControlMessage, type HostMessage } from '../../../gen/tether/v1/host.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';
import { agent, host } from '../../support/store-records.js';
import { waitUntil } from '../../support/wait.js';

const MIB = 1024 * 1024;
const WINDOW = 32;

/** A host stream whose reader takes each envelope only when released (or at once, if `isFast`). */
class HostStream {
  readonly delivered: number[] = [];
  readonly #pending: (() => void)[] = [];
  readonly stream: Writable;

  constructor(isFast: boolean) {
    this.stream = new Writable({
      objectMode: true,
      highWaterMark: 4,
      write: (envelope: ControlMessage, _encoding, callback): void => {
        const take = (): void => {
          if (envelope.deliver !== undefined) this.delivered.push(envelope.deliver.seq);
          callback();
        };
        if (isFast) take();
        else this.#pending.push(take);
      },
    });
  }

  /** Lets every envelope in hand through. */
  releaseAll(): void {
    for (const take of this.#pending.splice(0)) take();
  }
}

describe('delivery bounds in bytes', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function setUp(options: Partial<DeliveryManagerOptions>, isFast: boolean): Promise<{ delivery: DeliveryManager; session: HostSession; hostStream: HostStream }> {
    const dir = mkdtempSync(join(tmpdir(), 'tether-bounds-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const store = SqliteStore.open(databasePath(dir));
    cleanups.push(() => store.close());
    const clock = new FakeClock();
    await store.insertHost(host('host-1'));
    await store.insertAgent(agent('a', { hostId: 'host-1', issuedAtMs: clock.now(), expiresAtMs: clock.now() + 3_600_000 }));
    const delivery = new DeliveryManager({
      store,
      clock,
      logger: new LogCapture().logger,
      events: new ControlPlaneEvents(),
      rotate: () => Promise.resolve(),
      window: WINDOW,
      maxAttempts: 5,
      maxPending: 10_000,
      maxPendingBytes: 1024 * MIB,
      maxPayloadBytes: MIB,
      maxBatch: 1_000,
      retryMinDelayMs: 1_000,
      retryMaxDelayMs: 60_000,
      maxQueuedPerHost: 4_096,
      maxBufferedBytesPerHost: 64 * MIB,
      maxReadAheadBytes: 64 * MIB,
      ackedRetentionMs: 3_600_000,
      endedRetentionMs: 3_600_000,
      ...options,
    });
    cleanups.push(() => delivery.close());
    const hostStream = new HostStream(isFast);
    const session = new HostSession({
      hostId: 'host-1',
      sessionId: 'session-1',
      hello: Hello.fromPartial({}),
      connectedAtMs: clock.now(),
      // A real Node stream in the place of grpc-js's server stream: HostSession only writes to it.
      call: hostStream.stream as unknown as ServerDuplexStream<HostMessage, ControlMessage>,
    });
    cleanups.push(() => session.markClosed());
    const payload = Buffer.alloc(MIB, 7);
    await delivery.send(
      'a',
      { kind: 'operator' },
      Array.from({ length: 40 }, () => ({ contentType: 'application/octet-stream', payload, idempotencyKey: '' })),
    );
    return { delivery, session, hostStream };
  }

  it('never holds more read ahead than its byte bound, as acks arrive one by one', async () => {
    const { delivery, session, hostStream } = await setUp({ maxReadAheadBytes: 4 * MIB }, true);
    await delivery.attach(session, 'a', 0);
    await waitUntil(() => hostStream.delivered.length === WINDOW, 'a full window delivered');
    expect(delivery.readAheadBytes).toBeLessThanOrEqual(4 * MIB);

    // Each ack opens the window by one: one delivery goes, and what was read with it may be kept.
    let heldMostBytes = 0;
    for (let seq = 1; seq <= 8; seq++) {
      expect(await delivery.onAck(session, 'a', 1, seq, true, '')).toBeUndefined();
      await waitUntil(() => hostStream.delivered.length === WINDOW + seq, `delivery ${WINDOW + seq}`);
      heldMostBytes = Math.max(heldMostBytes, delivery.readAheadBytes);
      expect(delivery.readAheadBytes, `read ahead after ack ${seq}`).toBeLessThanOrEqual(4 * MIB);
    }
    // The read-ahead is used (within its bound), not merely switched off.
    expect(heldMostBytes).toBeGreaterThan(0);
    expect(hostStream.delivered).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
  });

  it("holds at most its byte bound for a slow host's stream, then goes on as the host reads", async () => {
    const { delivery, session, hostStream } = await setUp({ maxBufferedBytesPerHost: 8 * MIB }, false);
    // Envelopes in the session's queue or the stream's buffer, none yet read by the host.
    const buffered = (): number => session.queued + hostStream.stream.writableLength;
    await delivery.attach(session, 'a', 0);
    // The host reads nothing: deliveries stop once 8 MiB are buffered, far short of the window.
    await waitUntil(() => buffered() >= 7, 'the stream to fill');
    await new Promise((resolve) => setImmediate(resolve));
    expect(buffered()).toBeLessThanOrEqual(8);
    expect(session.bufferedBytes).toBeGreaterThan(7 * MIB);
    expect(session.bufferedBytes).toBeLessThanOrEqual(8 * MIB);

    // As the host reads, the rest of the window follows, never past the bound.
    for (let i = 0; i < 1_000 && hostStream.delivered.length < WINDOW; i++) {
      hostStream.releaseAll();
      await new Promise((resolve) => setImmediate(resolve));
      expect(buffered()).toBeLessThanOrEqual(8);
      expect(session.bufferedBytes).toBeLessThanOrEqual(8 * MIB);
    }
    expect(hostStream.delivered).toEqual(Array.from({ length: WINDOW }, (_, i) => i + 1));
  });
});
