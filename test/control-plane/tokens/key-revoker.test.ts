/** The re-sign window a key revocation declares: a pure function of the work, the competing rotations and the rate cap. */
import { describe, expect, it } from 'vitest';
import { RESIGN_DELIVERY_ALLOWANCE_MS, resignWindowMs } from '../../../control-plane/tokens/key-revoker.js';

const NOW = 1_800_000_000_000;
const ALLOW = RESIGN_DELIVERY_ALLOWANCE_MS;

describe('resignWindowMs', () => {
  it.each([
    { what: 'nothing to re-sign', scheduled: 0, other: [], cap: 200, expected: 0 },
    { what: '10,000 agents at the default cap', scheduled: 10_000, other: [], cap: 200, expected: 50_000 + ALLOW },
    { what: '1,000 agents at 100/s', scheduled: 1_000, other: [], cap: 100, expected: 10_000 + ALLOW },
    { what: 'a partial second rounds up', scheduled: 201, other: [], cap: 200, expected: 2_000 + ALLOW },
    { what: 'rotations due after the window do not count', scheduled: 200, other: [NOW + 1_000, NOW + 5_000], cap: 200, expected: 1_000 + ALLOW },
    { what: 'rotations due inside the window compete for the cap', scheduled: 200, other: [NOW, NOW + 500], cap: 200, expected: 2_000 + ALLOW },
    {
      what: 'competitors that fall inside a widened window widen it again',
      scheduled: 100,
      other: [...Array.from({ length: 100 }, () => NOW), ...Array.from({ length: 100 }, () => NOW + 1_500)],
      cap: 100,
      expected: 3_000 + ALLOW,
    },
  ])('$what', ({ scheduled, other, cap, expected }) => {
    expect(resignWindowMs(scheduled, other, NOW, cap)).toBe(expected);
  });
});
