import type { FakeClock } from './fake-clock.js';
import { HANG_BOUND_MS, waitUntil } from './wait.js';

/**
 * Resolves when `predicate()` holds, moving `clock` forward by `stepMs` after
 * every poll that found it false: for outcomes that need fake time to pass as
 * well as real work to finish (a host's reconnect backoff sleeps on the fake
 * clock; its new stream is real I/O). Fails with `what` after the hang bound.
 * Resolves with how far the clock moved.
 */
export async function advanceUntil(
  clock: FakeClock,
  stepMs: number,
  predicate: () => boolean | Promise<boolean>,
  what: string,
  boundMs = HANG_BOUND_MS,
): Promise<number> {
  let advancedMs = 0;
  await waitUntil(
    async () => {
      if (await predicate()) return true;
      clock.advance(stepMs);
      advancedMs += stepMs;
      return false;
    },
    what,
    boundMs,
  );
  return advancedMs;
}
