/**
 * Runs async sections one at a time per key (one agent's dispatch, rotation,
 * stop and events never interleave), while different keys run concurrently.
 * A key's entry is removed when its last section ends, so nothing accumulates.
 */
export class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>();

  /** Runs `section` after every section queued before it for `key`. */
  async run<T>(key: string, section: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const tail = new Promise<void>((resolve) => {
      release = resolve;
    });
    const chained = previous.then(() => tail);
    this.#tails.set(key, chained);
    await previous;
    try {
      return await section();
    } finally {
      release();
      if (this.#tails.get(key) === chained) this.#tails.delete(key);
    }
  }

  /** Keys with a section running or queued. */
  get size(): number {
    return this.#tails.size;
  }
}
