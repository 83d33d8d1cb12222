import type { Clock } from '../../common/clock.js';

interface Sleeper {
  untilMs: number;
  wake: () => void;
}

/**
 * The real clock, plus an offset a benchmark can move forward at once: every
 * wait that the jump brings due ends then, so whatever a jump makes due (say,
 * every agent's rotation) happens at once, and the time it takes is real.
 */
export class JumpClock implements Clock {
  #offsetMs = 0;
  readonly #sleepers = new Set<Sleeper>();

  now(): number {
    return Date.now() + this.#offsetMs;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted === true) return Promise.resolve();
    return new Promise((resolve) => {
      const sleeper: Sleeper = {
        untilMs: this.now() + Math.max(0, ms),
        wake: () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', sleeper.wake);
          this.#sleepers.delete(sleeper);
          resolve();
        },
      };
      // Waits past 2^31 ms would fire at once; nothing here waits that long but an idle loop (1 h).
      const timer = setTimeout(sleeper.wake, Math.min(Math.max(0, ms), 2 ** 31 - 1));
      signal?.addEventListener('abort', sleeper.wake, { once: true });
      this.#sleepers.add(sleeper);
    });
  }

  /** Moves time forward by `ms`, ending every wait that is then due. */
  jump(ms: number): void {
    this.#offsetMs += ms;
    const nowMs = this.now();
    for (const sleeper of [...this.#sleepers]) if (sleeper.untilMs <= nowMs) sleeper.wake();
  }
}
