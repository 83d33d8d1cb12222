import type { AppendRequest, AppendResult, Store } from '../store/store.js';

interface PendingAppend {
  request: AppendRequest;
  resolve: (results: AppendResult[]) => void;
  reject: (err: Error) => void;
}

/**
 * Acks one commit may hold back, waiting for company, while more keep arriving.
 * Bounds what a crash can lose (a lost ack only costs a re-send the host drops).
 */
const MAX_HELD_ACKS = 256;

/**
 * Group commit for the outbox: appends and acks that arrive in the same turn of
 * the event loop go to the store in one transaction, so durability costs one
 * commit per batch, not per message. An append's promise settles only after its
 * batch has committed.
 *
 * Acks come one envelope at a time and each is a cumulative watermark, so a
 * batch of acks alone waits while more keep coming: it is committed at the
 * first turn of the event loop in which no ack arrived, once MAX_HELD_ACKS have
 * gathered, as soon as an append joins it, or on flush. Under a steady stream
 * that is one commit per few hundred messages instead of one per message or two
 * (each commit rewrites the same outbox and index pages); a lone ack is
 * committed one turn later than it would be alone, a few microseconds when
 * idle. No timer is involved, so a fake clock sees the same behaviour. Whoever
 * reports an ack (the `message-acked` event) waits for its commit.
 */
export class OutboxBatcher {
  readonly #store: Store;
  #appends: PendingAppend[] = [];
  /** agentId → highest cumulative ack not yet committed. */
  #acks = new Map<string, number>();
  /** Settled (true once committed, false if that commit failed) with the batch each held ack is in. */
  #ackWaiters: ((isCommitted: boolean) => void)[] = [];
  /** Acks that advanced a watermark since the last commit. */
  #heldAcks = 0;
  /** Acks that arrived since the scheduled commit last looked (or was scheduled). */
  #acksSinceLook = 0;
  #flushRequests = 0;
  #isScheduled = false;
  #flushing: Promise<void> = Promise.resolve();

  constructor(store: Store) {
    this.#store = store;
  }

  /** Appends messages durably; resolves once they are committed. */
  append(request: AppendRequest): Promise<AppendResult[]> {
    return new Promise((resolve, reject) => {
      this.#appends.push({ request, resolve, reject });
      this.#schedule();
    });
  }

  /**
   * Records a cumulative ack; committed with a later batch. Resolves true once
   * it is committed, false if that commit failed (the ack is then lost, which
   * only means a re-send the host drops).
   */
  ack(agentId: string, seq: number): Promise<boolean> {
    if ((this.#acks.get(agentId) ?? 0) >= seq) return this.#whenAcksCommitted();
    this.#acks.set(agentId, seq);
    this.#heldAcks++;
    this.#acksSinceLook++;
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

  /** Whether a batch of acks alone waits one more turn: acks arrived since the last look, and not too many are held. */
  #isHoldingAcks(): boolean {
    const isArriving = this.#acksSinceLook > 0;
    this.#acksSinceLook = 0;
    return isArriving && this.#appends.length === 0 && this.#flushRequests === 0 && this.#heldAcks < MAX_HELD_ACKS;
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
    this.#acksSinceLook = 0;
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
