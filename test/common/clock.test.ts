/**
 * The real clock's waits. This is the one test that drives Node's own timers
 * (vi.useFakeTimers), as SystemClock is the module that arms them; fake-timers
 * behaves as Node does with a delay past 2³¹−1 ms: it fires after 1 ms.
 */
import { getEventListeners } from 'node:events';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MAX_TIMER_DELAY_MS, SystemClock } from '../../common/clock.js';

/** Whether `promise` has settled, after letting pending callbacks run. */
async function isSettled(promise: Promise<void>): Promise<boolean> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  await vi.advanceTimersByTimeAsync(0);
  return settled;
}

describe('SystemClock.sleep', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('waits the whole of a wait longer than one timer can hold (75 days)', async () => {
    const clock = new SystemClock();
    const seventyFiveDaysMs = 75 * 24 * 3_600_000;
    expect(seventyFiveDaysMs).toBeGreaterThan(MAX_TIMER_DELAY_MS);
    const slept = clock.sleep(seventyFiveDaysMs);
    await vi.advanceTimersByTimeAsync(1);
    expect(await isSettled(slept)).toBe(false);
    await vi.advanceTimersByTimeAsync(MAX_TIMER_DELAY_MS);
    expect(await isSettled(slept)).toBe(false);
    await vi.advanceTimersByTimeAsync(seventyFiveDaysMs - MAX_TIMER_DELAY_MS - 2);
    expect(await isSettled(slept)).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(await isSettled(slept)).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('waits exactly the longest single timer, and a short wait as before', async () => {
    const clock = new SystemClock();
    const longest = clock.sleep(MAX_TIMER_DELAY_MS);
    const short = clock.sleep(50);
    await vi.advanceTimersByTimeAsync(49);
    expect(await isSettled(short)).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(await isSettled(short)).toBe(true);
    await vi.advanceTimersByTimeAsync(MAX_TIMER_DELAY_MS - 51);
    expect(await isSettled(longest)).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(await isSettled(longest)).toBe(true);
  });

  it('ends a long wait when its signal aborts, in any of its timers, leaving none armed', async () => {
    const clock = new SystemClock();
    const stop = new AbortController();
    const slept = clock.sleep(3 * MAX_TIMER_DELAY_MS, stop.signal);
    await vi.advanceTimersByTimeAsync(MAX_TIMER_DELAY_MS + 5);
    expect(await isSettled(slept)).toBe(false);
    stop.abort();
    expect(await isSettled(slept)).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('does not wait for a negative, zero or NaN wait, and waits out Infinity until aborted', async () => {
    const clock = new SystemClock();
    for (const ms of [-5, 0, Number.NaN]) {
      const slept = clock.sleep(ms);
      expect(await isSettled(slept)).toBe(true);
    }
    const stop = new AbortController();
    const forever = clock.sleep(Number.POSITIVE_INFINITY, stop.signal);
    await vi.advanceTimersByTimeAsync(4 * MAX_TIMER_DELAY_MS);
    expect(await isSettled(forever)).toBe(false);
    stop.abort();
    expect(await isSettled(forever)).toBe(true);
  });

  it('listens to its signal only while it waits: none left after the time is up or the signal aborted', async () => {
    const clock = new SystemClock();
    const signal = new AbortController().signal;
    const slept = clock.sleep(1_000, signal);
    expect(getEventListeners(signal, 'abort')).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await isSettled(slept)).toBe(true);
    expect(getEventListeners(signal, 'abort')).toHaveLength(0);
    expect(vi.getTimerCount()).toBe(0);

    const stop = new AbortController();
    const sleeps = [clock.sleep(1_000, stop.signal), clock.sleep(2 * MAX_TIMER_DELAY_MS, stop.signal)];
    expect(getEventListeners(stop.signal, 'abort')).toHaveLength(2);
    stop.abort();
    for (const sleep of sleeps) expect(await isSettled(sleep)).toBe(true);
    expect(getEventListeners(stop.signal, 'abort')).toHaveLength(0);
    expect(vi.getTimerCount()).toBe(0);
  });
});
