/**
 * The host's reconnect delay: full jitter on [0, cap], the cap doubling from
 * 0.5 s to 30 s and bounded by a tenth of the lowest remaining token life.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_RECONNECT_BACKOFF, reconnectCapMs, reconnectDelayMs, RETRY_AFTER_CEILING_MS, retryAfterDelayMs } from '../../agent-host/reconnect-backoff.js';
import { SeededRandom } from '../../scripts/soak/seeded-random.js';

const NO_TOKENS = Infinity;

describe('reconnectCapMs', () => {
  it.each([
    // attempt, lowest remaining life, cap
    [0, NO_TOKENS, 500],
    [1, NO_TOKENS, 1_000],
    [5, NO_TOKENS, 16_000],
    [6, NO_TOKENS, 30_000],
    [30, NO_TOKENS, 30_000],
    [10_000, NO_TOKENS, 30_000],
    [-1, NO_TOKENS, 500],
    // The tokens' life bounds the cap: a tenth of what is left.
    [10, 3_600_000, 30_000],
    [10, 24_000, 2_400],
    [10, 5_000, 500],
    [1, 24_000, 1_000],
    // ...with a floor, also for tokens already expired (or a clock gone wrong).
    [10, 1_000, 250],
    [10, 0, 250],
    [10, -60_000, 250],
    [10, NaN, 250],
    // The floor never raises the exponential cap.
    [0, 0, 250],
  ])('attempt %s with %s ms left: cap %s ms', (attempt, remainingMs, capMs) => {
    expect(reconnectCapMs(attempt, remainingMs)).toBe(capMs);
  });

  it('follows a policy of the caller', () => {
    const policy = { ...DEFAULT_RECONNECT_BACKOFF, initialDelayMs: 10, maxDelayMs: 50 };
    expect([0, 1, 2, 3].map((a) => reconnectCapMs(a, NO_TOKENS, policy))).toEqual([10, 20, 40, 50]);
  });
});

describe('reconnectDelayMs', () => {
  it.each([
    // attempt, remaining, draw, delay
    [10, NO_TOKENS, 0, 0],
    [10, NO_TOKENS, 0.5, 15_000],
    [10, NO_TOKENS, 0.999_999, 29_999],
    [10, 24_000, 0.5, 1_200],
    [0, NO_TOKENS, 0.25, 125],
    // Draws outside [0, 1) never take the delay past the cap or below 0.
    [10, NO_TOKENS, 1.5, 30_000],
    [10, NO_TOKENS, -1, 0],
    [10, NO_TOKENS, NaN, 0],
  ])('attempt %s, %s ms left, draw %s: %s ms', (attempt, remainingMs, draw, delayMs) => {
    expect(reconnectDelayMs(attempt, remainingMs, () => draw)).toBe(delayMs);
  });

  it('keeps its jitter at the cap: hosts that fail together do not stay aligned', () => {
    const random = new SeededRandom(7);
    const delays = Array.from({ length: 20 }, () => reconnectDelayMs(40, NO_TOKENS, () => random.next()));
    expect(new Set(delays).size).toBe(delays.length);
  });

  /**
   * Show 2: 10,000 delays drawn at the cap fit the uniform distribution on
   * [0, cap] (Pearson's chi-square, 20 equal bins, so 19 degrees of freedom;
   * the critical value at p = 0.001 is 43.82), and none exceeds the bound set
   * by the lowest remaining life. The seed is fixed, so the statistic is too.
   */
  it.each([
    ['the backoff cap', NO_TOKENS, 30_000],
    ['the tokens\u2019 remaining life', 24_000, 2_400],
  ])('10,000 delays at %s are uniform on [0, cap] and never above it', (_what, remainingMs, capMs) => {
    const random = new SeededRandom(20_240_613);
    const draws = 10_000;
    const bins = 20;
    const counts = new Array<number>(bins).fill(0);
    let highestMs = -Infinity;
    let lowestMs = Infinity;
    for (let i = 0; i < draws; i++) {
      const delayMs = reconnectDelayMs(50, remainingMs, () => random.next());
      highestMs = Math.max(highestMs, delayMs);
      lowestMs = Math.min(lowestMs, delayMs);
      const bin = Math.min(bins - 1, Math.floor((delayMs / capMs) * bins));
      counts[bin] = (counts[bin] ?? 0) + 1;
    }
    const expected = draws / bins;
    const chiSquare = counts.reduce((sum, observed) => sum + (observed - expected) ** 2 / expected, 0);
    expect(chiSquare).toBeLessThan(43.82);
    expect(lowestMs).toBeGreaterThanOrEqual(0);
    expect(highestMs).toBeLessThanOrEqual(capMs);
    expect(highestMs).toBeLessThanOrEqual(Math.max(DEFAULT_RECONNECT_BACKOFF.lifetimeFloorMs, remainingMs * DEFAULT_RECONNECT_BACKOFF.lifetimeFraction));
    // Spread over the whole range, not bunched at the cap as a clamp after randomising would leave them.
    expect(highestMs).toBeGreaterThan(capMs * 0.99);
    expect(lowestMs).toBeLessThan(capMs * 0.01);
  });
});

describe('retryAfterDelayMs', () => {
  it.each([
    // [asked, lowest remaining, draw, expected]
    ['the retry-after at a draw of 0', 2_000, NO_TOKENS, 0, 2_000],
    ['half as much again at a draw near 1', 2_000, NO_TOKENS, 0.999_999, 2_999],
    ['the tokens\u2019 bound (a tenth of what is left)', 2_000, 10_000, 0, 1_000],
    ['the lifetime floor once tokens have (nearly) run out', 2_000, 100, 0.5, DEFAULT_RECONNECT_BACKOFF.lifetimeFloorMs],
    ['NaN remaining life as none left', 2_000, Number.NaN, 0.5, DEFAULT_RECONNECT_BACKOFF.lifetimeFloorMs],
    ['the ceiling with no token to bound it', 3_600_000, NO_TOKENS, 0.5, RETRY_AFTER_CEILING_MS],
    ['0 for a retry-after of 0', 0, NO_TOKENS, 0.5, 0],
    ['a NaN draw as 0', 2_000, NO_TOKENS, Number.NaN, 2_000],
  ])('is %s', (_what, askedMs, remainingMs, draw, expectedMs) => {
    expect(retryAfterDelayMs(askedMs, remainingMs, () => draw)).toBe(expectedMs);
  });
});
