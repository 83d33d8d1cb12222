/**
 * Batched delivery on the control plane's side, on a real SQLite store and a
 * real Node stream under a HostSession: several deliveries per DeliverBatch
 * (each bounded in bytes), single Delivers to a host that did not say it takes
 * batches, one watermark Ack for a whole window, and messages just appended
 * delivered from memory rather than read back from the store.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { HOST_MAX_RECEIVE_MESSAGE_BYTES, MAX_DELIVER_BATCH_BYTES } from '../../../common/protocol.js';
import { DeliveryManager, type DeliveryManagerOptions } from '../../../control-plane/delivery/delivery-manager.js';
import { ControlPlaneEvents } from '../../../control-plane/events.js';
import { HostSession } from '../../../control-plane/hosts/host-session.js';
import { databasePath, SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { ControlMessage, Hello, type HostMessage } from '../../../gen/tether/v1/host.js';
import { countingStore, StoreCalls } from '../../support/counting-store.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';
import { agent, host } from '../../support/store-records.js';
import { waitUntil } from '../../support/wait.js';

const KIB = 1024;
const MIB = 1024 * KIB;
const WINDOW = 32;

/** The seqs an envelope delivers, in order. */
function seqsOf(envelope: ControlMessage): number[] {
  if (envelope.deliver !== undefined) return [envelope.deliver.seq];
  return envelope.deliverBatch?.deliveries.map((deliver) => deliver.seq) ?? [];
}

describe('batched delivery', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  interface SetUp {
    delivery: DeliveryManager;
    session: HostSession;
    store: SqliteStore;
    calls: StoreCalls;
    events: ControlPlaneEvents;
    /** Every envelope written to the host's stream, in order. */
    envelopes: ControlMessage[];
    /** Every seq delivered, in order. */
    delivered: () => number[];
  }

  async function setUp(options: Partial<DeliveryManagerOptions>, acceptsDeliverBatch: boolean): Promise<SetUp> {
    const dir = mkdtempSync(join(tmpdir(), 'tether-batching-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const store = SqliteStore.open(databasePath(dir));
    cleanups.push(() => store.close());
    const calls = new StoreCalls();
    const clock = new FakeClock();
    await store.insertHost(host('host-1'));
    await store.insertAgent(agent('a', { hostId: 'host-1', issuedAtMs: clock.now(), expiresAtMs: clock.now() + 3_600_000 }));
    const events = new ControlPlaneEvents();
    const delivery = new DeliveryManager({
      store: countingStore(store, calls),
      clock,
      logger: new LogCapture().logger,
      events,
      rotate: () => Promise.resolve(),
      window: WINDOW,
      maxAttempts: 5,
      maxPending: 10_000,
      maxPendingBytes: 1024 * MIB,
      maxPayloadBytes: 4 * MIB,
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
    const envelopes: ControlMessage[] = [];
    const stream = new Writable({
      objectMode: true,
      write: (envelope: ControlMessage, _encoding, callback): void => {
        envelopes.push(envelope);
        callback();
      },
    });
    const session = new HostSession({
      hostId: 'host-1',
      sessionId: 'session-1',
      hello: Hello.fromPartial({ acceptsDeliverBatch }),
      connectedAtMs: clock.now(),
      // A real Node stream in the place of grpc-js's server stream: HostSession only writes to it.
      call: stream as unknown as ServerDuplexStream<HostMessage, ControlMessage>,
    });
    cleanups.push(() => session.markClosed());
    return { delivery, session, store, calls, events, envelopes, delivered: () => envelopes.flatMap(seqsOf) };
  }

  async function sendMessages(delivery: DeliveryManager, count: number, payloadBytes: number): Promise<void> {
    const payload = Buffer.alloc(payloadBytes, 7);
    await delivery.send(
      'a',
      { kind: 'operator' },
      Array.from({ length: count }, () => ({ contentType: 'application/octet-stream', payload, idempotencyKey: '' })),
    );
  }

  it('sends a window of deliveries in one DeliverBatch to a host that takes them, and the next after one watermark Ack', async () => {
    const { delivery, session, envelopes, delivered, store, events } = await setUp({}, true);
    await sendMessages(delivery, 40, 100);
    await delivery.attach(session, 'a', 0);
    await waitUntil(() => delivered().length === WINDOW, 'a full window delivered');
    expect(envelopes).toHaveLength(1);
    expect(envelopes[0]?.deliverBatch?.deliveries.map((deliver) => deliver.seq)).toEqual(Array.from({ length: WINDOW }, (_, i) => i + 1));

    // One cumulative Ack for the whole window: the rest goes, in one more batch, and all 32 count as acknowledged.
    let acked = 0;
    events.on('message-acked', ({ count }) => {
      acked += count;
    });
    expect(await delivery.onAck(session, 'a', 1, WINDOW, true, '')).toBeUndefined();
    await waitUntil(() => delivered().length === 40, 'the rest delivered');
    expect(envelopes).toHaveLength(2);
    expect(delivered()).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    await waitUntil(() => acked === WINDOW, 'the watermark committed');
    expect((await store.getAgent('a'))?.ackedSeq).toBe(WINDOW);
  });

  it('bounds each DeliverBatch in bytes, encoded, and still batches within the bound', async () => {
    const { delivery, session, envelopes, delivered } = await setUp({ maxDeliverBatchBytes: 16 * KIB }, true);
    await sendMessages(delivery, WINDOW, KIB);
    await delivery.attach(session, 'a', 0);
    await waitUntil(() => delivered().length === WINDOW, 'a full window delivered');
    expect(delivered()).toEqual(Array.from({ length: WINDOW }, (_, i) => i + 1));
    expect(envelopes.length).toBeGreaterThan(2);
    for (const envelope of envelopes) {
      expect(ControlMessage.encode(envelope).finish().length).toBeLessThanOrEqual(16 * KIB);
      expect(envelope.deliverBatch?.deliveries.length ?? 1).toBeGreaterThan(1);
    }
  });

  it("keeps every DeliverBatch of the largest payloads under a host's receive limit", async () => {
    const { delivery, session, envelopes, delivered } = await setUp({}, true);
    // Three of these come to more than a host takes in one envelope; two fit.
    const payloadBytes = Math.floor(MAX_DELIVER_BATCH_BYTES / 2.5);
    for (let i = 0; i < 5; i++) await sendMessages(delivery, 1, payloadBytes);
    await delivery.attach(session, 'a', 0);
    await waitUntil(() => delivered().length === 5, 'all five delivered');
    expect(delivered()).toEqual([1, 2, 3, 4, 5]);
    for (const envelope of envelopes) expect(ControlMessage.encode(envelope).finish().length).toBeLessThanOrEqual(HOST_MAX_RECEIVE_MESSAGE_BYTES);
    expect(envelopes.some((envelope) => (envelope.deliverBatch?.deliveries.length ?? 0) > 1)).toBe(true);
  });

  it('sends one Deliver per message to a host that did not say it takes batches', async () => {
    const { delivery, session, envelopes, delivered } = await setUp({}, false);
    await sendMessages(delivery, 40, 100);
    await delivery.attach(session, 'a', 0);
    await waitUntil(() => delivered().length === WINDOW, 'a full window delivered');
    expect(envelopes).toHaveLength(WINDOW);
    expect(envelopes.every((envelope) => envelope.deliver !== undefined && envelope.deliverBatch === undefined)).toBe(true);
    expect(delivered()).toEqual(Array.from({ length: WINDOW }, (_, i) => i + 1));
  });

  it('delivers messages just appended from memory, without reading them back from the store', async () => {
    const { delivery, session, calls, delivered } = await setUp({}, true);
    await delivery.attach(session, 'a', 0);
    // The attach found nothing to send; from here on, every message comes from an append.
    await waitUntil(() => calls.count('listDeliverable') === 1, 'the first read');
    calls.reset();
    for (let i = 0; i < 3; i++) await sendMessages(delivery, 10, 100);
    await waitUntil(() => delivered().length === 30, 'thirty delivered');
    expect(delivered()).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    expect(calls.count('listDeliverable')).toBe(0);
  });
});
