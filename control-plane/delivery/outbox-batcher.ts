import type { AppendRequest, AppendResult, Store } from '../store/store.js';

interface PendingAppend {
  request: AppendRequest;
  resolve: (results: AppendResult[]) => void;
  reject: (err: Error) => void;
}

/**
 * Group commit for the outbox: appends and acks that arrive in the same turn of
 * the event loop (and while the previous batch commits) go to the store in one
 * transaction, so durability costs one commit per batch, not per message. An
 * append's promise settles only after its batch has committed.
 */
export class OutboxBatcher {
  readonly #store: Store;
  #appends: PendingAppend[] = [];
  /** agentId → highest cumulative ack not yet committed. */
  #acks = new Map<string, number>();
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

  /** Records a cumulative ack; committed with the next batch (a lost ack only means a re-send the host drops). */
  ack(agentId: string, seq: number): void {
    if ((this.#acks.get(agentId) ?? 0) >= seq) return;
    this.#acks.set(agentId, seq);
    this.#schedule();
  }

  /** Resolves once everything queued so far has been committed. */
  async flush(): Promise<void> {
    await this.#flushing;
    if (this.#appends.length > 0 || this.#acks.size > 0) {
      this.#schedule();
      await this.#flushing;
    }
  }

  #schedule(): void {
    if (this.#isScheduled) return;
    this.#isScheduled = true;
    const previous = this.#flushing;
    this.#flushing = new Promise<void>((resolve) => {
      setImmediate(() => {
        this.#commitAfter(previous).then(resolve, resolve);
      });
    });
  }

  async #commitAfter(previous: Promise<void>): Promise<void> {
    await previous;
    this.#isScheduled = false;
    const appends = this.#appends;
    const acks = this.#acks;
    this.#appends = [];
    this.#acks = new Map();
    if (appends.length === 0 && acks.size === 0) return;
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
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      for (const pending of appends) pending.reject(error);
    }
  }
}
