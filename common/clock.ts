/**
 * The one place that reads the wall clock or arms a timer. Everything else takes
 * a {@link Clock} in its options, so tests can drive time by hand.
 */

/** A source of time and of waits. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  /**
   * Resolves after `ms` milliseconds, or as soon as `signal` aborts (it never
   * rejects), so loops can `await clock.sleep(ms, signal)` and then check the signal.
   */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** The real clock. Only `main` functions build one. */
export class SystemClock implements Clock {
  now(): number {
    return Date.now();
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted === true) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      signal?.addEventListener('abort', done, { once: true });
    });
  }
}
