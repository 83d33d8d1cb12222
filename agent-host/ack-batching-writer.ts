import type { StreamWriter } from '../common/stream-writer.js';
import type { Ack, HostMessage } from '../gen/tether/v1/host.js';

/**
 * The host's side of one stream, in front of its {@link StreamWriter}: delivery
 * Acks wait until the end of the current turn of the event loop, so the agents
 * that took messages in that turn cost one stream message between them, with
 * one cumulative Ack per agent (its watermark) instead of one per message.
 *
 * - A delivery ACK raises the watermark of its agent's pending ACK (same
 *   incarnation) rather than adding one; a NACK is queued as it comes, and an
 *   ACK after it goes after it, so the control plane sees each agent's acks in
 *   the order they were made.
 * - Everything else written (AgentEvent, a credential's Ack, Ping, Pong) first
 *   sends what waits: no envelope overtakes an Ack made before it (a `stopped`
 *   AgentEvent must not arrive ahead of the last message's Ack).
 * - The acks of a turn go as one AckBatch once the control plane's Welcome said
 *   it takes them ({@link acceptsAckBatch}); before that, or to a control plane
 *   that predates batches, one Ack envelope each, still coalesced.
 *
 * Waiting a turn, not a time, keeps a fake clock out of it; closing drops what
 * waits, as the stream it was for is gone (the next Hello says what was taken).
 */
export class AckBatchingWriter {
  readonly #writer: StreamWriter<HostMessage>;
  /** Whether the control plane takes AckBatch envelopes (its Welcome said so). */
  acceptsAckBatch = false;
  #pending: Ack[] = [];
  /** agentId → index in `#pending` of its ACK that a later ACK may raise. */
  #raisable = new Map<string, number>();
  #isScheduled = false;
  #isClosed = false;

  constructor(writer: StreamWriter<HostMessage>) {
    this.#writer = writer;
  }

  /** Queues a delivery Ack or NACK (its `seq` set) for the end of this turn. */
  ack(ack: Ack): void {
    if (this.#isClosed) return;
    const index = ack.ok ? this.#raisable.get(ack.agentId) : undefined;
    const raised = index === undefined ? undefined : this.#pending[index];
    if (raised !== undefined && raised.incarnation === ack.incarnation) {
      raised.seq = Math.max(raised.seq ?? 0, ack.seq ?? 0);
    } else {
      // Copied: the watermark above is raised in place.
      this.#pending.push({ ...ack });
      if (ack.ok) this.#raisable.set(ack.agentId, this.#pending.length - 1);
      else this.#raisable.delete(ack.agentId);
    }
    if (this.#isScheduled) return;
    this.#isScheduled = true;
    setImmediate(() => {
      this.#isScheduled = false;
      this.flush();
    });
  }

  /** Writes `message` after the Acks that wait. */
  write(message: HostMessage): void {
    this.flush();
    this.#writer.write(message);
  }

  /** Sends the Acks that wait now. */
  flush(): void {
    if (this.#pending.length === 0 || this.#isClosed) return;
    const acks = this.#pending;
    this.#pending = [];
    this.#raisable.clear();
    if (this.acceptsAckBatch && acks.length > 1) {
      this.#writer.write({ ackBatch: { acks } });
      return;
    }
    for (const ack of acks) this.#writer.write({ ack });
  }

  /** Resolves once fewer than `below` envelopes wait to be written, the Acks that wait included. */
  whenBelow(below: number): Promise<void> {
    this.flush();
    return this.#writer.whenBelow(below);
  }

  /** Drops what waits and writes nothing more; closes the writer. Idempotent. */
  close(): void {
    this.#isClosed = true;
    this.#pending = [];
    this.#raisable.clear();
    this.#writer.close();
  }
}
