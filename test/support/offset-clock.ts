import type { Clock } from '../../common/clock.js';
import type { FakeClock } from './fake-clock.js';

/**
 * Another machine's clock: the shared fake clock's time plus a fixed offset.
 * Its waits run on the shared clock, so advancing that one moves both.
 */
export class OffsetClock implements Clock {
  readonly #base: FakeClock;
  readonly #offsetMs: number;

  constructor(base: FakeClock, offsetMs: number) {
    this.#base = base;
    this.#offsetMs = offsetMs;
  }

  now(): number {
    return this.#base.now() + this.#offsetMs;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return this.#base.sleep(ms, signal);
  }
}
