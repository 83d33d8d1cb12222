import type { Clock } from '../../common/clock.js';

interface Sleeper {
  untilMs: number;
  timer: NodeJS.Timeout | undefined;
  wake: () => void;
}

/** The longest delay one Node timer holds. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Real time that a benchmark can stop and move forward: `freeze()` holds
 * `now()` still (set up 100,000 agents "at the same instant", or measure a
 * baseline while nothing falls due), `jumpTo()` moves it to a chosen moment
 * (every agent due at once), `resume()` lets it run again at real speed from
 * where it stands. A wait ends when this clock reaches its end, not when its
 * real-time timer fires, so nothing falls due while the clock is frozen.
 */
export class StormClock implements Clock {
  #baseMs = Date.now();
  #realAtBaseMs = performance.now();
  #frozenAtMs: number | undefined;
  readonly #sleepers = new Set<Sleeper>();

  now(): number {
    return this.#frozenAtMs ?? Math.floor(this.#baseMs + (performance.now() - this.#realAtBaseMs));
  }

  get isFrozen(): boolean {
    return this.#frozenAtMs !== undefined;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted === true) return Promise.resolve();
    return new Promise((resolve) => {
      const sleeper: Sleeper = {
        untilMs: this.now() + (Number.isNaN(ms) ? 0 : Math.max(0, ms)),
        timer: undefined,
        wake: () => {
          clearTimeout(sleeper.timer);
          signal?.removeEventListener('abort', sleeper.wake);
          this.#sleepers.delete(sleeper);
          resolve();
        },
      };
      this.#sleepers.add(sleeper);
      signal?.addEventListener('abort', sleeper.wake, { once: true });
      this.#arm(sleeper);
    });
  }

  /** Holds time still at its current value. */
  freeze(): void {
    this.#frozenAtMs ??= this.now();
  }

  /** Lets time run again, at real speed, from where it stands. */
  resume(): void {
    if (this.#frozenAtMs === undefined) return;
    this.#baseMs = this.#frozenAtMs;
    this.#realAtBaseMs = performance.now();
    this.#frozenAtMs = undefined;
    for (const sleeper of [...this.#sleepers]) this.#arm(sleeper);
  }

  /** Moves time forward to `atMs` (never back), ending every wait then due. */
  jumpTo(atMs: number): void {
    const nowMs = this.now();
    if (atMs <= nowMs) return;
    if (this.#frozenAtMs !== undefined) this.#frozenAtMs = atMs;
    else this.#baseMs += atMs - nowMs;
    for (const sleeper of [...this.#sleepers]) this.#arm(sleeper);
  }

  /** Ends `sleeper` if due; otherwise arms a real timer for what is left (none while frozen: resume or jump re-arms). */
  #arm(sleeper: Sleeper): void {
    clearTimeout(sleeper.timer);
    sleeper.timer = undefined;
    const leftMs = sleeper.untilMs - this.now();
    if (leftMs <= 0) {
      sleeper.wake();
      return;
    }
    if (this.#frozenAtMs !== undefined) return;
    sleeper.timer = setTimeout(() => this.#arm(sleeper), Math.min(leftMs, MAX_TIMER_MS));
  }
}
