import type { Clock } from '../../common/clock.js';

interface Timer {
  dueAtMs: number;
  order: number;
  resolve: () => void;
}

/**
 * A clock that moves only when told. Shared by every part in a test process
 * (issuer, verifier, scheduler, heartbeats), so time-driven behaviour is
 * exercised without waiting for it.
 */
export class FakeClock implements Clock {
  #nowMs: number;
  #timers: Timer[] = [];
  #order = 0;

  constructor(startMs = 1_800_000_000_000) {
    this.#nowMs = startMs;
  }

  now(): number {
    return this.#nowMs;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted === true) return Promise.resolve();
    return new Promise((resolve) => {
      const timer: Timer = {
        dueAtMs: this.#nowMs + Math.max(0, ms),
        order: this.#order++,
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        this.#timers = this.#timers.filter((t) => t !== timer);
        timer.resolve();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#timers.push(timer);
    });
  }

  /** Timers waiting. */
  get pendingTimers(): number {
    return this.#timers.length;
  }

  /** When the earliest waiting timer falls due, if any (to step time exactly onto due times). */
  get nextTimerDueAtMs(): number | undefined {
    let next: number | undefined;
    for (const timer of this.#timers) if (next === undefined || timer.dueAtMs < next) next = timer.dueAtMs;
    return next;
  }

  /** Moves time forward by `ms`, firing every timer that falls due, in order. */
  advance(ms: number): void {
    this.#nowMs += ms;
    const due = this.#timers.filter((t) => t.dueAtMs <= this.#nowMs).sort((a, b) => a.dueAtMs - b.dueAtMs || a.order - b.order);
    this.#timers = this.#timers.filter((t) => t.dueAtMs > this.#nowMs);
    for (const timer of due) timer.resolve();
  }
}
