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
    const remainingMs = Number.isNaN(ms) ? 0 : Math.max(0, ms);
    return new Promise((resolve) => Sleep.start(remainingMs, signal, resolve));
  }
}

/**
 * One pending {@link SystemClock.sleep}: its timer, and the listener on its
 * signal (itself, by `handleEvent`). An object rather than closures: every idle
 * agent's heartbeat loop and every host session's loops hold one, and under tsx
 * (which names each closure it can, a property of its own) two named closures
 * cost about half a KiB per sleep.
 */
class Sleep {
  readonly #resolve: () => void;
  readonly #signal: AbortSignal | undefined;
  #remainingMs: number;
  #timer: NodeJS.Timeout | undefined;

  private constructor(remainingMs: number, signal: AbortSignal | undefined, resolve: () => void) {
    this.#remainingMs = remainingMs;
    this.#signal = signal;
    this.#resolve = resolve;
  }

  /** Arms the first timer and listens to `signal`; `resolve` is called once, when the time is up or the signal aborts. */
  static start(remainingMs: number, signal: AbortSignal | undefined, resolve: () => void): void {
    const sleep = new Sleep(remainingMs, signal, resolve);
    sleep.#arm();
    signal?.addEventListener('abort', sleep, { once: true });
  }

  static #fire(this: void, sleep: Sleep): void {
    if (sleep.#remainingMs > 0) sleep.#arm();
    else sleep.handleEvent();
  }

  #arm(): void {
    const stepMs = Math.min(this.#remainingMs, MAX_TIMER_DELAY_MS);
    this.#remainingMs -= stepMs;
    this.#timer = setTimeout(Sleep.#fire, stepMs, this);
  }

  /** The signal aborted, or the time is up: ends the sleep. */
  handleEvent(): void {
    clearTimeout(this.#timer);
    this.#signal?.removeEventListener('abort', this);
    this.#resolve();
  }
}
