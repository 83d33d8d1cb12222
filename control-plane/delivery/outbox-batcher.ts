import type { Clock } from '../../common/clock.js';
import type { AppendRequest, AppendResult, Store } from '../store/store.js';

interface PendingAppend {
  request: AppendRequest;
  resolve: (results: AppendResult[]) => void;
  reject: (err: Error) => void;
}

/**
 * Acks (each one agent's watermark) a batch of acks alone may hold before it is
 * committed, and the messages they may acknowledge: what a crash can lose (a
 * lost ack only costs a re-send the host drops).
 */
const MAX_HELD_ACKS = 256;
const MAX_HELD_ACKED_MESSAGES = 4096;

/**
 * Turns of the event loop a batch of acks alone may wait: time as the loop
 * counts it, which a fake clock does not stop (when idle, a turn takes a few
 * microseconds).
 */
const MAX_HOLD_TURNS = 512;

/** Milliseconds (on the clock) a batch of acks alone may wait. */
const MAX_HOLD_MS = 100;

/** Options of {@link OutboxBatcher}. */
export interface OutboxBatcherOptions {
  /** Bounds how long acks alone wait ({@link MAX_HOLD_MS}); without one, only turns of the loop do. */
  clock?: Clock;
}

/**
 * Group commit for the outbox: appends and acks that arrive in the same turn of
 * the event loop go to the store in one transaction, so durability costs one
 * commit per batch, not per message. An append's promise settles only after its
 * batch has committed.
 *
 * Acks are cumulative watermarks, and a host sends one per agent per turn for
 * all the messages it took in that turn, with turns between them in which none
 * arrives. So acks alone are committed on a count-or-time basis: once they are
 * MAX_HELD_ACKS or the messages they acknowledge MAX_HELD_ACKED_MESSAGES, or
 * the first of them has waited MAX_HOLD_TURNS turns of the event loop or
 * MAX_HOLD_MS on the clock, whichever comes first; at once when an append joins
 * them, and on flush.
 * (Committing at the first turn with no ack, as before, made coalesced acks cost
 * a commit each.) A lost ack only costs a re-send the host drops, and the
 * delivery window moves on acks as they arrive, not as they commit; the hold
 * only delays `message-acked`, whose reporter waits for the commit: by at most
 * MAX_HOLD_MS under load, a millisecond or two when idle. (A commit with
 * `synchronous = FULL` waits for the disk, on the event loop: on a loaded
 * machine, each one not made is several milliseconds of delivery.)
 */
export class OutboxBatcher {
  readonly #store: Store;
  readonly #clock: Clock | undefined;
  #appends: PendingAppend[] = [];
  /** agentId → highest cumulative ack not yet committed. */
  #acks = new Map<string, number>();
  /** Settled (true once committed, false if that commit failed) with the batch each held ack is in. */
  #ackWaiters: ((isCommitted: boolean) => void)[] = [];
  /** Acks that raised a watermark since the last commit. */
  #heldAcks = 0;
  /** Messages the held acks acknowledge, as their callers counted them. */
  #heldMessages = 0;
  /** Turns the held acks have waited. */
  #heldTurns = 0;
  /** When the first held ack came (on the clock). */
  #firstHeldAtMs = 0;
  #flushRequests = 0;
  #isScheduled = false;
  #flushing: Promise<void> = Promise.resolve();

  constructor(store: Store, options: OutboxBatcherOptions = {}) {
    this.#store = store;
    this.#clock = options.clock;
  }

  /** Appends messages durably; resolves once they are committed. */
  append(request: AppendRequest): Promise<AppendResult[]> {
    return new Promise((resolve, reject) => {
      this.#appends.push({ request, resolve, reject });
      this.#schedule();
    });
  }

  /**
   * Records a cumulative ack, which acknowledges `count` more messages (1 if not
   * said); committed with a later batch. Resolves true once it is committed,
   * false if that commit failed (the ack is then lost, which only means a
   * re-send the host drops).
   */
  ack(agentId: string, seq: number, count = 1): Promise<boolean> {
    if ((this.#acks.get(agentId) ?? 0) >= seq) return this.#whenAcksCommitted();
    if (this.#acks.size === 0) {
      this.#firstHeldAtMs = this.#clock?.now() ?? 0;
      this.#heldTurns = 0;
    }
    this.#acks.set(agentId, seq);
    this.#heldAcks++;
    this.#heldMessages += Math.max(1, count);
    const committed = this.#whenAcksCommitted();
    this.#schedule();
    return committed;
  }

  /** Resolves once everything queued so far has been committed. */
  async flush(): Promise<void> {
    this.#flushRequests++;
    try {
      await this.#flushing;
      if (this.#appends.length > 0 || this.#acks.size > 0) {
        this.#schedule();
        await this.#flushing;
      }
    } finally {
      this.#flushRequests--;
    }
  }

  #whenAcksCommitted(): Promise<boolean> {
    return new Promise((resolve) => this.#ackWaiters.push(resolve));
  }

  #schedule(): void {
    if (this.#isScheduled) return;
    this.#isScheduled = true;
    const previous = this.#flushing;
    this.#flushing = new Promise<void>((resolve) => {
      const look = (): void => {
        if (this.#isHoldingAcks()) {
          setImmediate(look);
          return;
        }
        this.#commitAfter(previous).then(resolve, resolve);
      };
      setImmediate(look);
    });
  }

  /** Whether a batch of acks alone waits one more turn: neither their count nor their time is up. */
  #isHoldingAcks(): boolean {
    if (this.#appends.length > 0 || this.#flushRequests > 0 || this.#acks.size === 0) return false;
    this.#heldTurns++;
    if (this.#heldAcks >= MAX_HELD_ACKS || this.#heldMessages >= MAX_HELD_ACKED_MESSAGES || this.#heldTurns >= MAX_HOLD_TURNS) return false;
    return this.#clock === undefined || this.#clock.now() - this.#firstHeldAtMs < MAX_HOLD_MS;
  }

  async #commitAfter(previous: Promise<void>): Promise<void> {
    await previous;
    this.#isScheduled = false;
    const appends = this.#appends;
    const acks = this.#acks;
    const ackWaiters = this.#ackWaiters;
    this.#appends = [];
    this.#acks = new Map();
    this.#ackWaiters = [];
    this.#heldAcks = 0;
    this.#heldMessages = 0;
    this.#heldTurns = 0;
    if (appends.length === 0 && acks.size === 0) {
      for (const settle of ackWaiters) settle(true);
      return;
    }
    try {
      const results = await this.#store.applyOutboxBatch({
        appends: appends.map((pending) => pending.request),
        acks: [...acks].map(([agentId, seq]) => ({ agentId, seq })),
      });
      appends.forEach((pending, i) => {
        const result = results[i];
        if (result instanceof Error) pending.reject(result);
        else if (result === undefined) pending.reject(new Error('missing append result'));
        else pending.resolve(result);
      });
      for (const settle of ackWaiters) settle(true);
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      for (const pending of appends) pending.reject(error);
      for (const settle of ackWaiters) settle(false);
    }
  }
}
