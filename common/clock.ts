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

/**
 * The longest delay one Node timer can hold (2³¹−1 ms, about 24.8 days). A
 * longer one is not refused: Node warns (TimeoutOverflowWarning) and fires it
 * after 1 ms, so a loop waiting out a 75-day host token would spin.
 */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/** The real clock. Only `main` functions build one. */
export class SystemClock implements Clock {
  now(): number {
    return Date.now();
  }

  /**
   * Waits `ms` (negative or NaN: no wait; Infinity: until `signal` aborts). A
   * wait past {@link MAX_TIMER_DELAY_MS} is a chain of timers, each within
   * what one timer can hold, so it never ends early.
   */
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted === true) return Promise.resolve();
    let remainingMs = Number.isNaN(ms) ? 0 : Math.max(0, ms);
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const arm = (): void => {
        const stepMs = Math.min(remainingMs, MAX_TIMER_DELAY_MS);
        remainingMs -= stepMs;
        timer = setTimeout(remainingMs > 0 ? arm : done, stepMs);
      };
      arm();
      signal?.addEventListener('abort', done, { once: true });
    });
  }
}
