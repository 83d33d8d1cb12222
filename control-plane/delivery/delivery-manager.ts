import { randomUUID } from 'node:crypto';
import retry from 'retry';
import type { Clock } from '../../common/clock.js';
import { InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import { MAX_DELIVER_BATCH_BYTES } from '../../common/protocol.js';
import type { OutgoingMessage } from '../../gen/tether/v1/common.js';
import type { ControlMessage, Deliver } from '../../gen/tether/v1/host.js';
import type { ControlPlaneEvents } from '../events.js';
import { envelopeBytes, type HostSession } from '../hosts/host-session.js';
import { isPastHalfLife } from '../rotation/rotation-policy.js';
import { senderName, type AppendResult, type MessageRecord, type MessageSender, type NewMessage, type Store } from '../store/store.js';
import { OutboxBatcher } from './outbox-batcher.js';

/** Options of {@link DeliveryManager}. */
export interface DeliveryManagerOptions {
  store: Store;
  clock: Clock;
  logger: Logger;
  events: ControlPlaneEvents;
  /** Issues a fresh credential to the agent and sends it down its host's stream (resolves once queued there). */
  rotate: (agentId: string) => Promise<void>;
  /** Unacknowledged deliveries per agent. */
  window: number;
  /** Refusals after which a message is dead-lettered. */
  maxAttempts: number;
  /** Unacknowledged messages an outbox holds before sends are refused. */
  maxPending: number;
  /** Payload bytes of unacknowledged messages an outbox holds before sends are refused. */
  maxPendingBytes: number;
  maxPayloadBytes: number;
  /** Messages per send call. */
  maxBatch: number;
  /** Re-send backoff after a refusal. */
  retryMinDelayMs: number;
  retryMaxDelayMs: number;
  /** Envelopes queued on one host stream before delivery waits for it to drain. */
  maxQueuedPerHost: number;
  /**
   * Bytes buffered for one host stream (queued, or written and not yet flushed)
   * before delivery waits for it to drain: what a slow host can make the control
   * plane hold. One delivery always goes when nothing is buffered.
   */
  maxBufferedBytesPerHost: number;
  /** Payload bytes read ahead from the store and kept for later deliveries, all agents together. */
  maxReadAheadBytes: number;
  /**
   * Encoded bytes of one DeliverBatch (to hosts that take them); at most, and
   * by default, {@link MAX_DELIVER_BATCH_BYTES}. A single delivery larger than
   * this still goes, alone.
   */
  maxDeliverBatchBytes?: number;
  /** Acknowledged messages (and their idempotency keys) are kept this long. */
  ackedRetentionMs: number;
  /** Messages of ended agents are kept this long. */
  endedRetentionMs: number;
}

/** Where delivery stands for one agent on its host's current stream. */
/** Takes from `cursor.unacked` every entry up to `seq` (acknowledged, cumulatively): their append times. */
function takeUnacked(cursor: Cursor, seq: number): number[] {
  let n = 0;
  while (n < cursor.unacked.length && (cursor.unacked[n] as { seq: number }).seq <= seq) n++;
  return cursor.unacked.splice(0, n).map((sent) => sent.createdAtMs);
}

interface Cursor {
  agentId: string;
  session: HostSession;
  /** The placement this cursor delivers to; Acks from any other are stale. */
  incarnation: number;
  /** Highest seq sent on this stream (or known taken). */
  sentSeq: number;
  /** Highest seq the host has acknowledged (cumulative). */
  ackedSeq: number;
  isPumping: boolean;
  needsPump: boolean;
  /** A refused seq waiting for its re-send. */
  retrySeq: number | undefined;
  /**
   * Deliverable messages past `sentSeq`, in seq order and gapless, read from the
   * store ahead of the window opening (at most `window` of them per read) or kept
   * from an append that was the cursor's next seq (at most `maxBatch`), within the
   * manager's `maxReadAheadBytes` for all cursors together, so acks arriving one
   * by one do not cost one store read each, nor fresh messages a read back. Nothing that can change a message past
   * `sentSeq` matters here: refusals concern sent seqs, requeues append past the
   * end, and a dead letter purged after it was read is still moved past with a Skip.
   * Changed only through #takeReadAhead, #keepReadAhead, #trimReadAhead and #dropCursor,
   * which keep the byte count.
   */
  readAhead: MessageRecord[];
  /** The largest payload of the last store read (0 before any), to size the next read to the budget. */
  largestPayloadBytes: number;
  /** Appends to the agent's outbox (sends, requeues) seen since the cursor was made. */
  appends: number;
  /**
   * `appends` as it was when a store read began that found the outbox drained
   * (fewer deliverable messages past `sentSeq` than it asked for); -1 if none
   * did. While it still equals `appends`, the store has nothing more to deliver
   * than the read-ahead, and is not read again.
   */
  drainedAtAppends: number;
  /** A store read for this cursor is under way. */
  isReading: boolean;
  /** The agent's token as last read from the store (see #refreshTokenIfNeeded). */
  token: { issuedAtMs: number; expiresAtMs: number } | undefined;
  /**
   * Seqs sent on this stream and not acknowledged yet, in seq order, with their
   * append times: what the delivery latency is measured from. Only first sends
   * (a re-send keeps its entry), so at most the window's worth.
   */
  unacked: { seq: number; createdAtMs: number }[];
  /** Being handed over (drain): nothing more is sent, acks are still taken (see {@link DeliveryManager.hold}). */
  isHeld: boolean;
}

/**
 * Delivers each agent's outbox down its host's stream: in seq order, at most
 * `window` unacknowledged per agent, a fresh token first when the agent's is
 * past half its life, refusals re-sent with backoff (holding that agent's queue
 * only) and dead-lettered after `maxAttempts`, when a Skip moves the host past.
 */
export class DeliveryManager {
  readonly #options: DeliveryManagerOptions;
  readonly #logger: Logger;
  readonly #batcher: OutboxBatcher;
  readonly #cursors = new Map<string, Cursor>();
  readonly #closing = new AbortController();
  readonly #hostBounds: { maxQueued: number; maxBufferedBytes: number };
  readonly #maxDeliverBatchBytes: number;
  /** Payload bytes of every cursor's `readAhead`. */
  #readAheadBytes = 0;
  #pruning: Promise<void> | undefined;

  constructor(options: DeliveryManagerOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'delivery' });
    this.#batcher = new OutboxBatcher(options.store, { clock: options.clock });
    this.#hostBounds = { maxQueued: options.maxQueuedPerHost, maxBufferedBytes: options.maxBufferedBytesPerHost };
    this.#maxDeliverBatchBytes = Math.min(options.maxDeliverBatchBytes ?? MAX_DELIVER_BATCH_BYTES, MAX_DELIVER_BATCH_BYTES);
  }

  /**
   * Payload bytes held in read-ahead right now, counted afresh from every
   * cursor (not from the running count, so a test checks the bound itself).
   * @internal
   */
  get readAheadBytes(): number {
    let bytes = 0;
    for (const cursor of this.#cursors.values()) bytes += payloadBytes(cursor.readAhead);
    return bytes;
  }

  /** Starts the retention sweep. */
  start(): void {
    this.#pruning ??= this.#pruneLoop();
  }

  /**
   * Appends messages from `sender` to an agent's outbox (durable before this
   * resolves), then pushes them. Idempotency keys are the sender's own: another
   * sender's key never makes one of these a duplicate.
   */
  async send(agentId: string, sender: MessageSender, messages: readonly OutgoingMessage[]): Promise<AppendResult[]> {
    const { maxBatch, maxPayloadBytes, clock } = this.#options;
    if (messages.length === 0) throw new InvalidArgumentError('no messages to send');
    if (messages.length > maxBatch) throw new InvalidArgumentError(`at most ${maxBatch} messages per call`);
    for (const message of messages) {
      if (message.payload.length > maxPayloadBytes) {
        throw new InvalidArgumentError(`a payload is ${message.payload.length} bytes; the limit is ${maxPayloadBytes}`);
      }
      if (message.idempotencyKey.length > 256) throw new InvalidArgumentError('an idempotency key is at most 256 characters');
      if (message.contentType.length > 256) throw new InvalidArgumentError('a content type is at most 256 characters');
    }
    const nowMs = clock.now();
    const appended: NewMessage[] = messages.map((message) => ({
      id: randomUUID(),
      contentType: message.contentType === '' ? 'application/octet-stream' : message.contentType,
      payload: message.payload,
      createdAtMs: nowMs,
      idempotencyKey: message.idempotencyKey === '' ? null : message.idempotencyKey,
    }));
    const results = await this.#batcher.append({
      agentId,
      sender,
      maxPending: this.#options.maxPending,
      maxPendingBytes: this.#options.maxPendingBytes,
      messages: appended,
    });
    this.#keepAppended(agentId, sender, appended, results);
    this.#kick(agentId);
    return results;
  }

  /**
   * Keeps messages just appended (and committed) as the cursor's read-ahead, so
   * they are delivered from memory rather than read back from the store: only
   * when the first of them is the cursor's next seq (right after its read-ahead,
   * or after `sentSeq` when that is empty), so the read-ahead stays the gapless
   * run of deliverable seqs it must be; otherwise the store has messages in
   * between and they are read in turn. At most `maxBatch` per cursor, within
   * the read-ahead byte budget. Each is what a store read would return: a
   * pending message, never attempted. When the outbox was drained before and
   * all of them are kept, it still is: the store is not read after them.
   */
  #keepAppended(agentId: string, sender: MessageSender, appended: readonly NewMessage[], results: readonly AppendResult[]): void {
    const cursor = this.#cursors.get(agentId);
    if (cursor === undefined) return;
    // Drained before this append (and no read under way that may yet replace the read-ahead): still so once it is all kept.
    const wasDrained = cursor.drainedAtAppends === cursor.appends && !cursor.isReading;
    cursor.appends++;
    let nextSeq = (cursor.readAhead.at(-1)?.seq ?? cursor.sentSeq) + 1;
    const from = senderName(sender);
    for (const [index, message] of appended.entries()) {
      const result = results[index];
      // A duplicate holds an earlier seq: no longer the next one, nor anything after it.
      if (result === undefined || result.isDuplicate) continue;
      if (result.seq !== nextSeq) return;
      if (cursor.readAhead.length >= this.#options.maxBatch) return;
      if (this.#readAheadBytes + message.payload.length > this.#options.maxReadAheadBytes) return;
      cursor.readAhead.push({
        agentId,
        seq: result.seq,
        id: message.id,
        from,
        contentType: message.contentType,
        payload: message.payload,
        createdAtMs: message.createdAtMs,
        state: 'pending',
        attempts: 0,
        lastError: '',
        idempotencyKey: message.idempotencyKey,
      });
      this.#readAheadBytes += message.payload.length;
      nextSeq++;
    }
    if (wasDrained) cursor.drainedAtAppends = cursor.appends;
  }

  /**
   * An agent was (re)started on `session`, or its host resumed with it: delivery
   * starts after what the host reports taken (or what the store knows was).
   */
  async attach(session: HostSession, agentId: string, hostTakenSeq: number): Promise<void> {
    const agent = await this.#options.store.getAgent(agentId);
    // A stream that ended meanwhile had its cursors dropped (detachSession); one made now would stay behind.
    if (agent === undefined || session.state === 'closed') return;
    // A host never took what was never appended; a claim past that is ignored.
    const taken = Math.min(Math.max(agent.ackedSeq, hostTakenSeq), agent.lastSeq);
    if (taken > agent.ackedSeq) this.#commitAck(agentId, taken, 0, []);
    this.#dropCursor(agentId);
    this.#cursors.set(agentId, {
      agentId,
      session,
      incarnation: agent.incarnation,
      sentSeq: taken,
      ackedSeq: taken,
      isPumping: false,
      needsPump: false,
      retrySeq: undefined,
      readAhead: [],
      largestPayloadBytes: 0,
      appends: 0,
      drainedAtAppends: -1,
      isReading: false,
      token: undefined,
      unacked: [],
      isHeld: false,
    });
    this.#kick(agentId);
  }

  /**
   * Stops giving `agentId` new messages on its current stream (its hand-over
   * began): nothing more is sent, not even a re-send, while Acks of what was
   * sent are still taken. A cursor made afresh (its host resumed on a new
   * stream) is not held: the host drops what it is given once the hand-over began.
   */
  hold(agentId: string): void {
    const cursor = this.#cursors.get(agentId);
    if (cursor !== undefined) cursor.isHeld = true;
  }

  /** Gives `agentId` messages again after a {@link hold} (its hand-over was not confirmed). */
  unhold(agentId: string): void {
    const cursor = this.#cursors.get(agentId);
    if (cursor === undefined || !cursor.isHeld) return;
    cursor.isHeld = false;
    this.#kick(agentId);
  }

  /**
   * The agent's host stopped it for a hand-over and says every seq up to
   * `takenSeq` was taken: that is acknowledged (as a resume would, never past
   * what was appended nor below what is known), its cursor goes, and every ack
   * queued is committed before this resolves. Returns the acknowledged seq,
   * durable: where its next placement starts.
   */
  async handOver(agentId: string, takenSeq: number): Promise<number> {
    const agent = await this.#options.store.getAgent(agentId);
    if (agent === undefined) throw new NotFoundError(`no agent ${agentId}`);
    const known = Math.max(agent.ackedSeq, this.#cursors.get(agentId)?.ackedSeq ?? 0);
    const taken = Math.min(Math.max(known, takenSeq), agent.lastSeq);
    this.#dropCursor(agentId);
    if (taken > known) this.#commitAck(agentId, taken, taken - known, []);
    await this.#batcher.flush();
    return Math.max(taken, agent.ackedSeq);
  }

  /** Stops delivering to an agent (stopped, ended, or moved). */
  detach(agentId: string): void {
    this.#dropCursor(agentId);
  }

  /** A host's stream ended: its cursors go; they are rebuilt from its next Hello. */
  detachSession(session: HostSession): void {
    for (const [agentId, cursor] of this.#cursors) if (cursor.session === session) this.#dropCursor(agentId);
  }

  /**
   * Applies an Ack or NACK of a delivery. Returns a reason to Reject the
   * envelope, or undefined if it was accepted.
   */
  async onAck(session: HostSession, agentId: string, incarnation: number, seq: number, isOk: boolean, error: string): Promise<string | undefined> {
    const cursor = this.#cursors.get(agentId);
    if (cursor?.session !== session) return `no deliveries to ${agentId} on this stream`;
    if (incarnation === 0) return 'an Ack of a delivery must name the incarnation';
    if (incarnation !== cursor.incarnation) {
      // From the agent's earlier placement on this host, finishing a message after its host resumed
      // (a restore, or a placement made while it was away): it says nothing about this placement.
      this.#logger.debug({ agentId, seq, incarnation, current: cursor.incarnation }, 'Ack from an earlier placement ignored');
      return undefined;
    }
    if (seq > cursor.sentSeq) {
      // Not sent on this stream yet, but perhaps on the previous one: right after a resume the
      // host may ack what it took before it saw the re-sends. Only a seq never appended is a lie.
      const agent = await this.#options.store.getAgent(agentId);
      if (agent === undefined || seq > agent.lastSeq || !isOk) return `an Ack for seq ${seq}, never sent`;
      if (this.#cursors.get(agentId) !== cursor) return undefined;
      cursor.sentSeq = Math.max(cursor.sentSeq, seq);
      this.#trimReadAhead(cursor);
    }
    if (isOk) {
      if (seq > cursor.ackedSeq) {
        const count = seq - cursor.ackedSeq;
        cursor.ackedSeq = seq;
        this.#commitAck(agentId, seq, count, takeUnacked(cursor, seq));
      }
      if (cursor.retrySeq !== undefined && cursor.retrySeq <= seq) cursor.retrySeq = undefined;
      this.#kick(agentId);
      return undefined;
    }
    if (seq <= cursor.ackedSeq) return undefined;
    const message = await this.#options.store.recordRefusal(agentId, seq, error, this.#options.maxAttempts);
    if (message === undefined) {
      // Refused again after it was dead-lettered (its Skip crossed a re-delivery): say Skip again.
      const [dead] = await this.#options.store.listMessages(agentId, ['dead'], seq - 1, 1);
      if (dead?.seq === seq && this.#cursors.get(agentId) === cursor) session.send({ skip: { agentId, seq } });
      return undefined;
    }
    if (message.state === 'dead') {
      // Not delivered: kept out of the delivery latency.
      if (this.#cursors.get(agentId) === cursor) cursor.unacked = cursor.unacked.filter((sent) => sent.seq !== seq);
      this.#logger.warn({ agentId, seq, id: message.id, attempts: message.attempts, error }, 'message dead-lettered');
      this.#options.events.emit('dead-letter', { agentId, seq, id: message.id });
      session.send({ skip: { agentId, seq } });
      return undefined;
    }
    cursor.retrySeq = seq;
    const delayMs = retry.createTimeout(message.attempts - 1, {
      factor: 2,
      minTimeout: this.#options.retryMinDelayMs,
      maxTimeout: this.#options.retryMaxDelayMs,
      randomize: true,
    });
    this.#logger.info({ agentId, seq, attempts: message.attempts, delayMs }, 'message refused; will re-send');
    this.#scheduleResend(cursor, seq, delayMs);
    return undefined;
  }

  /**
   * Queues a cumulative ack for the next group commit. Reported (`message-acked`,
   * when `count` > 0) once durable, so whoever hears of it finds the outbox
   * saying so; an ack whose commit failed is only a re-send the host drops.
   * `createdAtMs`: the append times of the acknowledged messages this stream sent.
   */
  #commitAck(agentId: string, seq: number, count: number, createdAtMs: readonly number[]): void {
    this.#batcher.ack(agentId, seq, count).then(
      (isCommitted) => {
        if (!isCommitted || count <= 0) return;
        const nowMs = this.#options.clock.now();
        this.#options.events.emit('message-acked', { agentId, seq, count, deliveredInMs: createdAtMs.map((atMs) => Math.max(0, nowMs - atMs)) });
      },
      (err: unknown) => this.#logger.error({ err, agentId, seq }, 'ack not committed'),
    );
  }

  /**
   * Re-sends a refused message after `delayMs`. The re-send reads the store and
   * may need a fresh token: if that fails (a full disk, say) it is logged and
   * tried again later, for as long as the message still waits on this cursor;
   * it never becomes an unhandled rejection, which would end the process.
   */
  #scheduleResend(cursor: Cursor, seq: number, delayMs: number): void {
    this.#resendLater(cursor, seq, delayMs).catch((err: unknown) => {
      if (this.#closing.signal.aborted || this.#cursors.get(cursor.agentId) !== cursor || cursor.retrySeq !== seq) return;
      const nextDelayMs = Math.min(Math.max(delayMs * 2, this.#options.retryMinDelayMs), this.#options.retryMaxDelayMs);
      this.#logger.error({ err, agentId: cursor.agentId, seq, nextDelayMs }, 're-send failed; will try again');
      this.#scheduleResend(cursor, seq, nextDelayMs);
    });
  }

  /** Appends a dead letter again under a new seq (same message id) and pushes it. */
  async requeue(agentId: string, seq: number): Promise<number> {
    const newSeq = await this.#options.store.requeueMessage(agentId, seq);
    const cursor = this.#cursors.get(agentId);
    if (cursor !== undefined) cursor.appends++;
    this.#kick(agentId);
    return newSeq;
  }

  /** Commits queued acks and stops the sweep. */
  async close(): Promise<void> {
    this.#closing.abort();
    await this.#pruning;
    await this.#batcher.flush();
  }

  async #resendLater(cursor: Cursor, seq: number, delayMs: number): Promise<void> {
    await this.#options.clock.sleep(delayMs, this.#closing.signal);
    if (this.#closing.signal.aborted || this.#cursors.get(cursor.agentId) !== cursor || cursor.retrySeq !== seq || cursor.isHeld) return;
    const [message] = await this.#options.store.listDeliverable(cursor.agentId, seq - 1, 1);
    if (message?.seq !== seq || message.state !== 'pending') return;
    await this.#refreshTokenIfNeeded(cursor);
    cursor.session.send({
      deliver: {
        agentId: cursor.agentId,
        seq,
        attempt: message.attempts + 1,
        message: { id: message.id, from: message.from, contentType: message.contentType, payload: message.payload, createdAtMs: message.createdAtMs },
      },
    });
  }

  /** Pumps an agent's outbox unless a pump is running (which then goes round once more). */
  #kick(agentId: string): void {
    const cursor = this.#cursors.get(agentId);
    if (cursor === undefined) return;
    if (cursor.isPumping) {
      cursor.needsPump = true;
      return;
    }
    cursor.isPumping = true;
    this.#pump(cursor).then(
      () => {
        cursor.isPumping = false;
      },
      (err: unknown) => {
        cursor.isPumping = false;
        this.#logger.error({ err, agentId }, 'delivery failed');
      },
    );
  }

  async #pump(cursor: Cursor): Promise<void> {
    const { store, window } = this.#options;
    do {
      cursor.needsPump = false;
      for (;;) {
        if (this.#cursors.get(cursor.agentId) !== cursor || cursor.session.state === 'closed' || cursor.isHeld) return;
        if (cursor.sentSeq - cursor.ackedSeq >= window) break;
        // Nothing is read from the store while the host's stream is full.
        await cursor.session.whenRoomFor(0, this.#hostBounds);
        let messages = this.#takeReadAhead(cursor);
        if (messages.length === 0) {
          // Nothing was appended since a read found the outbox drained: nothing to read.
          if (cursor.drainedAtAppends === cursor.appends) break;
          const appendsBefore = cursor.appends;
          const limit = this.#readLimit(cursor);
          cursor.isReading = true;
          try {
            messages = await store.listDeliverable(cursor.agentId, cursor.sentSeq, limit);
          } finally {
            cursor.isReading = false;
          }
          if (messages.length < limit) cursor.drainedAtAppends = appendsBefore;
          cursor.largestPayloadBytes = messages.reduce((largest, message) => Math.max(largest, message.payload.length), 0);
        }
        if (this.#cursors.get(cursor.agentId) !== cursor) return;
        // Already taken on a previous stream (its ack moved the cursor past them meanwhile).
        messages = messages.filter((message) => message.seq > cursor.sentSeq);
        if (messages.length === 0) break;
        if (messages.some((m) => m.state === 'pending')) await this.#refreshTokenIfNeeded(cursor);
        if (this.#cursors.get(cursor.agentId) !== cursor) return;
        if (cursor.isHeld) {
          this.#keepReadAhead(cursor, messages);
          return;
        }
        const refusedBytes = this.#sendWithinBounds(cursor, messages);
        this.#keepReadAhead(cursor, messages);
        if (refusedBytes !== undefined) await cursor.session.whenRoomFor(refusedBytes, this.#hostBounds);
      }
    } while (cursor.needsPump);
  }

  /**
   * Sends `messages` (in seq order, past `sentSeq`) while the agent's window and
   * the host stream's bounds allow: to a host that takes them, as DeliverBatch
   * envelopes of at most `maxDeliverBatchBytes` (each delivery counted at an
   * upper bound of its encoded size), else one Deliver each. A Skip goes in its
   * own envelope, after whatever was batched before it, so the host sees every
   * seq in order. Returns the size of the envelope the stream refused (nothing
   * of it was sent), or undefined if none was.
   */
  #sendWithinBounds(cursor: Cursor, messages: readonly MessageRecord[]): number | undefined {
    const room = this.#options.window - (cursor.sentSeq - cursor.ackedSeq);
    const isBatching = cursor.session.acceptsDeliverBatch;
    const maxBatchBytes = this.#maxDeliverBatchBytes;
    let batch: Deliver[] = [];
    let batchBytes = 0;
    /** Highest seq sent or batched. */
    let lastSeq = cursor.sentSeq;
    const sendBatch = (): number | undefined => {
      const last = batch[batch.length - 1];
      if (last === undefined) return undefined;
      const envelope: ControlMessage = batch.length === 1 ? { deliver: last } : { deliverBatch: { deliveries: batch } };
      if (!cursor.session.trySend(envelope, this.#hostBounds)) return envelopeBytes(envelope);
      cursor.sentSeq = last.seq;
      for (const sent of batch) cursor.unacked.push({ seq: sent.seq, createdAtMs: sent.message?.createdAtMs ?? 0 });
      batch = [];
      batchBytes = 0;
      return undefined;
    };
    for (const message of messages.slice(0, Math.max(0, room))) {
      if (message.seq <= lastSeq) continue;
      if (message.seq !== lastSeq + 1 || message.state === 'dead') {
        const refusedBytes = sendBatch();
        if (refusedBytes !== undefined) return refusedBytes;
        if (message.seq !== cursor.sentSeq + 1) {
          // Seqs are gapless per agent, so a gap is a dead letter purged or requeued before this
          // host acknowledged past it (say its Skip was lost with a stream). The host still
          // waits for each missing seq: skip them, or its queue would be held for ever.
          this.#logger.warn({ agentId: cursor.agentId, expected: cursor.sentSeq + 1, got: message.seq }, 'outbox gap');
          for (let seq = cursor.sentSeq + 1; seq < message.seq; seq++) cursor.session.send({ skip: { agentId: cursor.agentId, seq } });
          cursor.sentSeq = message.seq - 1;
        }
        if (message.state === 'dead') {
          cursor.session.send({ skip: { agentId: cursor.agentId, seq: message.seq } });
          cursor.sentSeq = message.seq;
          lastSeq = message.seq;
          continue;
        }
      }
      const deliver: Deliver = {
        agentId: cursor.agentId,
        seq: message.seq,
        attempt: message.attempts + 1,
        message: { id: message.id, from: message.from, contentType: message.contentType, payload: message.payload, createdAtMs: message.createdAtMs },
      };
      if (!isBatching) {
        const envelope: ControlMessage = { deliver };
        if (!cursor.session.trySend(envelope, this.#hostBounds)) return envelopeBytes(envelope);
        cursor.sentSeq = message.seq;
        cursor.unacked.push({ seq: message.seq, createdAtMs: message.createdAtMs });
        lastSeq = message.seq;
        continue;
      }
      const bytes = deliverBytesBound(deliver);
      if (batch.length > 0 && batchBytes + bytes > maxBatchBytes) {
        const refusedBytes = sendBatch();
        if (refusedBytes !== undefined) return refusedBytes;
      }
      batch.push(deliver);
      batchBytes += bytes;
      lastSeq = message.seq;
    }
    return sendBatch();
  }

  /**
   * How many messages to read from the store for `cursor`: what its window has
   * room for, plus what the read-ahead budget could keep (judged by the size of
   * its last read), so big payloads are not read only to be dropped again.
   */
  #readLimit(cursor: Cursor): number {
    const { window, maxReadAheadBytes } = this.#options;
    if (cursor.largestPayloadBytes === 0) return window;
    const room = Math.max(1, window - (cursor.sentSeq - cursor.ackedSeq));
    const spareBytes = Math.max(0, maxReadAheadBytes - this.#readAheadBytes);
    return Math.min(window, room + Math.floor(spareBytes / cursor.largestPayloadBytes));
  }

  /** Empties `cursor`'s read-ahead, returning what it held. */
  #takeReadAhead(cursor: Cursor): MessageRecord[] {
    const messages = cursor.readAhead;
    cursor.readAhead = [];
    this.#readAheadBytes -= payloadBytes(messages);
    return messages;
  }

  /**
   * Keeps for later what of `messages` was not sent, as far as the read-ahead
   * byte budget allows (a prefix: what is dropped is read again when its turn comes).
   */
  #keepReadAhead(cursor: Cursor, messages: readonly MessageRecord[]): void {
    if (this.#cursors.get(cursor.agentId) !== cursor) return;
    this.#takeReadAhead(cursor);
    const kept: MessageRecord[] = [];
    for (const message of messages) {
      if (message.seq <= cursor.sentSeq) continue;
      if (this.#readAheadBytes + message.payload.length > this.#options.maxReadAheadBytes) break;
      kept.push(message);
      this.#readAheadBytes += message.payload.length;
    }
    cursor.readAhead = kept;
  }

  /** Drops from `cursor`'s read-ahead what is no longer past `sentSeq`. */
  #trimReadAhead(cursor: Cursor): void {
    const stale = cursor.readAhead.filter((message) => message.seq <= cursor.sentSeq);
    if (stale.length === 0) return;
    cursor.readAhead = cursor.readAhead.filter((message) => message.seq > cursor.sentSeq);
    this.#readAheadBytes -= payloadBytes(stale);
  }

  /** Forgets `agentId`'s cursor, giving back its read-ahead bytes. */
  #dropCursor(agentId: string): void {
    const cursor = this.#cursors.get(agentId);
    if (cursor === undefined) return;
    this.#cursors.delete(agentId);
    this.#takeReadAhead(cursor);
  }

  /**
   * Ahead of a delivery: a fresh token when the agent's is past half its life,
   * sent first on the same stream. A rotation only ever replaces a token with a
   * later one of the same lifetime, whose half-life falls later; so while the
   * token last read is short of half its life, the current one is too, and the
   * store is read again only once the cached token reaches half-life.
   */
  async #refreshTokenIfNeeded(cursor: Cursor): Promise<void> {
    const { clock, store } = this.#options;
    const cached = cursor.token;
    if (cached !== undefined && !isPastHalfLife(clock.now(), cached.issuedAtMs, cached.expiresAtMs)) return;
    const agent = await store.getAgent(cursor.agentId);
    if (agent === undefined) throw new NotFoundError(`no agent ${cursor.agentId}`);
    if (isPastHalfLife(clock.now(), agent.issuedAtMs, agent.expiresAtMs)) {
      cursor.token = undefined;
      await this.#options.rotate(cursor.agentId);
      return;
    }
    cursor.token = { issuedAtMs: agent.issuedAtMs, expiresAtMs: agent.expiresAtMs };
  }

  async #pruneLoop(): Promise<void> {
    const { clock, store, ackedRetentionMs, endedRetentionMs } = this.#options;
    const signal = this.#closing.signal;
    while (!signal.aborted) {
      await clock.sleep(Math.min(ackedRetentionMs, 3_600_000), signal);
      if (signal.aborted) return;
      try {
        const nowMs = clock.now();
        const removed = await store.pruneMessages(nowMs - ackedRetentionMs, nowMs - endedRetentionMs);
        if (removed > 0) this.#logger.info({ removed }, 'outbox pruned');
      } catch (err) {
        this.#logger.error({ err }, 'outbox prune failed');
      }
    }
  }
}

/**
 * An upper bound of the bytes `deliver` takes inside a DeliverBatch: its payload,
 * its strings at three UTF-8 bytes per UTF-16 unit (the most one takes), and 64
 * bytes for every tag, length and number (under 50 at most). Over-counting
 * only makes batches smaller; the bound is what keeps them under the host's limit.
 */
export function deliverBytesBound(deliver: Deliver): number {
  const message = deliver.message;
  const strings = deliver.agentId.length + (message === undefined ? 0 : message.id.length + message.from.length + message.contentType.length);
  return (message?.payload.length ?? 0) + 3 * strings + 64;
}

function payloadBytes(messages: readonly MessageRecord[]): number {
  let bytes = 0;
  for (const message of messages) bytes += message.payload.length;
  return bytes;
}
