import type { EventEmitter } from 'node:events';
import { setTimeout as nextPoll } from 'node:timers/promises';

/** The one suite-wide bound on waiting for an event: it only catches a hang. */
export const HANG_BOUND_MS = 20_000;

/**
 * Resolves when `predicate()` holds, re-checking every few milliseconds (a poll
 * of a condition, not a sleep standing in for one); fails with `what` after the
 * hang bound.
 */
export async function waitUntil(predicate: () => boolean | Promise<boolean>, what: string, boundMs = HANG_BOUND_MS): Promise<void> {
  const startedAt = performance.now();
  for (;;) {
    if (await predicate()) return;
    if (performance.now() - startedAt > boundMs) throw new Error(`timed out waiting for ${what}`);
    await nextPoll(2);
  }
}

/** Resolves with the first `event` whose payload satisfies `match`; fails with a message after the hang bound. */
export function nextEvent<T>(emitter: EventEmitter, event: string, match: (payload: T) => boolean = () => true, boundMs = HANG_BOUND_MS): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onEvent = (payload: T): void => {
      if (!match(payload)) return;
      cleanup();
      resolve(payload);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out waiting for event ${event}`));
    }, boundMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      emitter.off(event, onEvent);
    };
    emitter.on(event, onEvent);
  });
}
