/**
 * Runs the host's envelope work in one queue per key (an agent, or the host's
 * own credential) instead of one serial chain, so an agent whose work is slow
 * (a stop waiting out its deadline) holds up nothing but its own queue.
 *
 * - Work in one queue runs in the order it was queued, one task at a time.
 * - A barrier (Welcome) waits for everything queued before it, in every queue,
 *   then runs; everything queued after it waits for it.
 * - A queue with nothing left in it is dropped: no state outlives its agent.
 *
 * A task's failure is handed to `onError` and never stops its queue. The router
 * adds no bound of its own: each task must be bounded (agent stops have a deadline).
 */
export class EnvelopeRouter {
  /** The last task of each queue that still has work. */
  readonly #tails = new Map<string, Promise<void>>();
  /** The last barrier; a queue with no work starts behind it. */
  #barrier: Promise<void> = Promise.resolve();
  readonly #onError: (err: unknown, key: string | undefined) => void;

  constructor(onError: (err: unknown, key: string | undefined) => void) {
    this.#onError = onError;
  }

  /** Queues `task` on `key`: it runs after the key's earlier tasks and after the last barrier. */
  enqueue(key: string, task: () => Promise<void> | void): void {
    const previous = this.#tails.get(key) ?? this.#barrier;
    const tail = previous.then(task).catch((err: unknown) => this.#onError(err, key));
    this.#tails.set(key, tail);
    // `tail` never rejects (caught above), and neither does this.
    tail.then(
      () => {
        if (this.#tails.get(key) === tail) this.#tails.delete(key);
      },
      () => undefined,
    );
  }

  /** Queues `task` across every queue: it runs once all work queued so far is done; later work waits for it. */
  barrier(task: () => Promise<void> | void): void {
    const before = [this.#barrier, ...this.#tails.values()];
    this.#tails.clear();
    this.#barrier = Promise.all(before)
      .then(task)
      .catch((err: unknown) => this.#onError(err, undefined));
  }

  /** Resolves once everything queued so far is done. */
  async idle(): Promise<void> {
    await Promise.all([this.#barrier, ...this.#tails.values()]);
  }

  /** Queues with work in them (not counting a barrier). */
  get queueCount(): number {
    return this.#tails.size;
  }
}
