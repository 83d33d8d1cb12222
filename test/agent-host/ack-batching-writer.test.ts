/**
 * The host's ack coalescing, on a real StreamWriter over a real Node stream:
 * one watermark per agent per turn of the event loop, NACKs in order, nothing
 * overtaking an Ack made before it, and single Acks to a control plane that
 * does not take AckBatch.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { AckBatchingWriter } from '../../agent-host/ack-batching-writer.js';
import { StreamWriter } from '../../common/stream-writer.js';
import type { Ack, HostMessage } from '../../gen/tether/v1/host.js';
import { waitUntil } from '../support/wait.js';

/** A writer over a stream that records every envelope written to it. */
function recordingWriter(): { writer: AckBatchingWriter; written: HostMessage[] } {
  const written: HostMessage[] = [];
  const stream = new Writable({
    objectMode: true,
    write: (message: HostMessage, _encoding, callback): void => {
      written.push(message);
      callback();
    },
  });
  return { writer: new AckBatchingWriter(new StreamWriter<HostMessage>(stream)), written };
}

const ack = (agentId: string, seq: number, incarnation = 1): Ack => ({ agentId, seq, ok: true, error: '', incarnation });
const nack = (agentId: string, seq: number): Ack => ({ agentId, seq, ok: false, error: 'no', incarnation: 1 });

/** Resolves after one turn of the event loop. */
const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('AckBatchingWriter', () => {
  it('sends the acks of one turn as one AckBatch with one watermark per agent', async () => {
    const { writer, written } = recordingWriter();
    writer.acceptsAckBatch = true;
    for (let seq = 1; seq <= 32; seq++) {
      writer.ack(ack('a', seq));
      writer.ack(ack('b', seq));
    }
    expect(written).toEqual([]);
    await waitUntil(() => written.length > 0, 'the batch written');
    expect(written).toEqual([{ ackBatch: { acks: [ack('a', 32), ack('b', 32)] } }]);
  });

  it("keeps a NACK in its place among an agent's acks, and an ACK of another incarnation apart", async () => {
    const { writer, written } = recordingWriter();
    writer.acceptsAckBatch = true;
    writer.ack(ack('a', 1));
    writer.ack(ack('a', 2));
    writer.ack(nack('a', 3));
    writer.ack(ack('a', 3));
    writer.ack(ack('a', 4));
    writer.ack(ack('a', 5, 2));
    await waitUntil(() => written.length > 0, 'the batch written');
    expect(written).toEqual([{ ackBatch: { acks: [ack('a', 2), nack('a', 3), ack('a', 4), ack('a', 5, 2)] } }]);
  });

  it('lets nothing overtake an Ack made before it', async () => {
    const { writer, written } = recordingWriter();
    writer.acceptsAckBatch = true;
    writer.ack(ack('a', 7));
    writer.write({ agentEvent: { agentId: 'a', state: 'stopped', detail: '', incarnation: 1 } });
    expect(written).toEqual([{ ack: ack('a', 7) }, { agentEvent: { agentId: 'a', state: 'stopped', detail: '', incarnation: 1 } }]);
    await nextTurn();
    expect(written).toHaveLength(2);
  });

  it('sends one Ack envelope per watermark to a control plane that does not take AckBatch', async () => {
    const { writer, written } = recordingWriter();
    for (let seq = 1; seq <= 5; seq++) {
      writer.ack(ack('a', seq));
      writer.ack(ack('b', seq));
    }
    await waitUntil(() => written.length === 2, 'the acks written');
    expect(written).toEqual([{ ack: ack('a', 5) }, { ack: ack('b', 5) }]);
    expect(written.some((message) => message.ackBatch !== undefined)).toBe(false);
  });

  it('drops what waits once closed', async () => {
    const { writer, written } = recordingWriter();
    writer.ack(ack('a', 1));
    writer.close();
    await nextTurn();
    await nextTurn();
    expect(written).toEqual([]);
  });
});
