import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  hostRotationDueAtMs,
  isPastHalfLife,
  isRotationDue,
  neededRotationsPerSecond,
  ROTATION_WINDOW_START,
  ROTATION_WINDOW_WIDTH,
  rotationDueAtMs,
} from '../../../control-plane/rotation/rotation-policy.js';

const IAT = 1_800_000_000_000;
const HOUR = 3_600_000;

describe('rotation policy', () => {
  it('opens the window at half the TTL and closes it at 60 %', () => {
    expect(ROTATION_WINDOW_START).toBe(0.5);
    expect(ROTATION_WINDOW_START + ROTATION_WINDOW_WIDTH).toBeCloseTo(0.6, 12);
  });

  it.each([
    { what: 'u = 0: half the TTL', iat: IAT, exp: IAT + HOUR, u: 0, due: IAT + 1_800_000 },
    { what: 'u = 1: 60 % of the TTL', iat: IAT, exp: IAT + HOUR, u: 1, due: IAT + 2_160_000 },
    { what: 'u = 0.5: 55 % of the TTL', iat: IAT, exp: IAT + HOUR, u: 0.5, due: IAT + 1_980_000 },
    { what: 'u below 0 clamps to 0', iat: IAT, exp: IAT + HOUR, u: -3, due: IAT + 1_800_000 },
    { what: 'u above 1 clamps to 1', iat: IAT, exp: IAT + HOUR, u: 7, due: IAT + 2_160_000 },
    { what: 'a 60 s token at u = 0', iat: IAT, exp: IAT + 60_000, u: 0, due: IAT + 30_000 },
    { what: 'a 60 s token at u = 1', iat: IAT, exp: IAT + 60_000, u: 1, due: IAT + 36_000 },
    { what: 'fractions of a ms round down', iat: 0, exp: 3, u: 0, due: 1 },
    { what: 'a zero TTL is due at once', iat: IAT, exp: IAT, u: 0.5, due: IAT },
    // Shrunk from the jitter-bounds property below: NaN made the due time NaN, never due, and the scheduler spin.
    { what: 'u NaN counts as 0', iat: IAT, exp: IAT + HOUR, u: Number.NaN, due: IAT + 1_800_000 },
  ])('rotationDueAtMs: $what', ({ iat, exp, u, due }) => {
    expect(rotationDueAtMs(iat, exp, u)).toBe(due);
  });

  it.each([
    { what: 'before due', now: 999, due: 1_000, isDue: false },
    { what: 'exactly at due', now: 1_000, due: 1_000, isDue: true },
    { what: 'after due', now: 1_001, due: 1_000, isDue: true },
  ])('isRotationDue: $what', ({ now, due, isDue }) => {
    expect(isRotationDue(now, due)).toBe(isDue);
  });

  it.each([
    { what: 'at issue', now: IAT, isPast: false },
    { what: 'just before half', now: IAT + HOUR / 2 - 1, isPast: false },
    { what: 'exactly half', now: IAT + HOUR / 2, isPast: true },
    { what: 'after half', now: IAT + HOUR / 2 + 1, isPast: true },
    { what: 'after expiry', now: IAT + 2 * HOUR, isPast: true },
  ])('isPastHalfLife of a 1 h token: $what', ({ now, isPast }) => {
    expect(isPastHalfLife(now, IAT, IAT + HOUR)).toBe(isPast);
  });

  it.each([
    { what: '72 h host token: 24 h in', iat: IAT, exp: IAT + 72 * HOUR, due: IAT + 24 * HOUR },
    { what: '3 s host token: 1 s in', iat: IAT, exp: IAT + 3_000, due: IAT + 1_000 },
    { what: 'thirds of a ms round down', iat: 0, exp: 10, due: 3 },
  ])('hostRotationDueAtMs: $what', ({ iat, exp, due }) => {
    expect(hostRotationDueAtMs(iat, exp)).toBe(due);
  });

  it('leaves a host at least two thirds of its credential when rotation falls due', () => {
    const due = hostRotationDueAtMs(IAT, IAT + 72 * HOUR);
    expect(IAT + 72 * HOUR - due).toBe(48 * HOUR);
  });

  it('always leaves at least 40 % of a token\'s life when its rotation falls due', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 4_000_000_000_000 }),
        fc.integer({ min: 1, max: 400 * 24 * HOUR }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (iat, ttl, u) => {
          const exp = iat + ttl;
          const due = rotationDueAtMs(iat, exp, u);
          expect(due).toBeGreaterThanOrEqual(iat + Math.floor(ttl * 0.5));
          // In integers, so float rounding of 0.4 cannot blur the bound: (exp - due) / ttl >= 2/5.
          expect(5 * (exp - due)).toBeGreaterThanOrEqual(2 * ttl);
        },
      ),
      { numRuns: 2_000 },
    );
  });

  it('keeps every due time inside the jitter window [50 %, 60 %] of the TTL, whatever the random source gives', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 4_000_000_000_000 }),
        fc.integer({ min: 0, max: 400 * 24 * HOUR }),
        // Any double at all: NaN, infinities and values outside [0, 1] included (the source is injected).
        fc.double(),
        (iat, ttl, u) => {
          const due = rotationDueAtMs(iat, iat + ttl, u);
          expect(Number.isSafeInteger(due)).toBe(true);
          // In integers: ttl/2 - 1 < due - iat <= 0.6·ttl.
          expect(2 * (due - iat)).toBeGreaterThan(ttl - 2);
          expect(10 * (due - iat)).toBeLessThanOrEqual(6 * ttl);
        },
      ),
      { numRuns: 2_000 },
    );
  });

  it('moves the due time later as the jitter grows (agents started together drift apart, in order)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 4_000_000_000_000 }),
        fc.integer({ min: 1, max: 400 * 24 * HOUR }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (iat, ttl, u1, u2) => {
          const [low, high] = u1 <= u2 ? [u1, u2] : [u2, u1];
          expect(rotationDueAtMs(iat, iat + ttl, low)).toBeLessThanOrEqual(rotationDueAtMs(iat, iat + ttl, high));
        },
      ),
      { numRuns: 2_000 },
    );
  });

  describe('the half-life rule on delivery (isPastHalfLife)', () => {
    const times = fc.integer({ min: 0, max: 4_000_000_000_000 });
    const ttls = fc.integer({ min: 1, max: 400 * 24 * HOUR });

    it('is exactly "half the TTL has passed", and so monotone in time', () => {
      fc.assert(
        fc.property(times, ttls, fc.integer({ min: -2 * 400 * 24 * HOUR, max: 2 * 400 * 24 * HOUR }), fc.nat({ max: 400 * 24 * HOUR }), (iat, ttl, offset, later) => {
          const now = iat + offset;
          // In integers: past half-life iff 2·(now - iat) >= ttl.
          expect(isPastHalfLife(now, iat, iat + ttl)).toBe(2 * (now - iat) >= ttl);
          if (isPastHalfLife(now, iat, iat + ttl)) expect(isPastHalfLife(now + later, iat, iat + ttl)).toBe(true);
        }),
        { numRuns: 2_000 },
      );
    });

    it('leaves a message more than half a lifetime of token: a token short of half-life has more than TTL/2 to go', () => {
      fc.assert(
        fc.property(times, ttls, fc.nat({ max: 400 * 24 * HOUR }), (iat, ttl, offset) => {
          const now = iat + offset;
          if (!isPastHalfLife(now, iat, iat + ttl)) expect(2 * (iat + ttl - now)).toBeGreaterThan(ttl);
        }),
        { numRuns: 2_000 },
      );
    });

    // DeliveryManager reads the agent's token from the store only once the token it last read is past
    // half-life: sound only if a later token of the same TTL is never past half-life before an earlier one.
    it('never finds a later token of the same lifetime past half-life while an earlier one is not', () => {
      fc.assert(
        fc.property(times, ttls, fc.nat({ max: 400 * 24 * HOUR }), fc.integer({ min: -400 * 24 * HOUR, max: 2 * 400 * 24 * HOUR }), (iat, ttl, gap, offset) => {
          const now = iat + offset;
          const laterIat = iat + gap;
          if (isPastHalfLife(now, laterIat, laterIat + ttl)) expect(isPastHalfLife(now, iat, iat + ttl)).toBe(true);
        }),
        { numRuns: 2_000 },
      );
    });
  });

  it.each([
    { agents: 0, ttlMs: 30_000, needed: 0 },
    { agents: 1, ttlMs: 30_000, needed: 1 },
    { agents: 5_000, ttlMs: 30_000, needed: 607 },
    { agents: 100_000, ttlMs: 30_000, needed: 12_122 },
    { agents: 100_000, ttlMs: 3_600_000, needed: 102 },
    { agents: 10, ttlMs: 0, needed: 0 },
  ])('needs $needed rotations/s for $agents agents at a TTL of $ttlMs ms (2 × agents / (0.55 × TTL))', ({ agents, ttlMs, needed }) => {
    expect(neededRotationsPerSecond(agents, ttlMs)).toBe(needed);
  });
});
