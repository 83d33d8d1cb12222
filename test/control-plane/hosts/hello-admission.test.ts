/**
 * The Hello admission gate on its own: a bound on Hellos processed at once
 * (peak measured), deferrals with a retry-after of at least one unit, spread
 * over a window that grows with the excess.
 */
import { describe, expect, it } from 'vitest';
import { HelloAdmission } from '../../../control-plane/hosts/hello-admission.js';
import { FakeClock } from '../../support/fake-clock.js';

describe('HelloAdmission', () => {
  it('admits up to its bound, counts the peak, and admits again once a permit is released (once, however often released)', () => {
    const gate = new HelloAdmission({ clock: new FakeClock(), random: () => 0.5, maxConcurrent: 3 });
    const permits = [gate.tryAdmit(), gate.tryAdmit(), gate.tryAdmit()];
    expect(permits.every((p) => p !== undefined)).toBe(true);
    expect(gate.tryAdmit()).toBeUndefined();
    expect(gate.inFlight).toBe(3);
    permits[0]?.release();
    permits[0]?.release();
    expect(gate.inFlight).toBe(2);
    expect(gate.tryAdmit()).toBeDefined();
    expect(gate.tryAdmit()).toBeUndefined();
    expect(gate.peakInFlight).toBe(3);
    gate.resetPeak();
    expect(gate.peakInFlight).toBe(3);
  });

  it('with no bound admits everything and still measures the peak', () => {
    const gate = new HelloAdmission({ clock: new FakeClock(), random: () => 0.5, maxConcurrent: Infinity });
    for (let i = 0; i < 500; i++) expect(gate.tryAdmit()).toBeDefined();
    expect(gate.peakInFlight).toBe(500);
  });

  it('asks deferred hosts to wait at least a unit, over a window that grows by a unit per bound of excess in the current window', () => {
    const clock = new FakeClock();
    let draw = 0.999_999;
    const gate = new HelloAdmission({ clock, random: () => draw, maxConcurrent: 10, retryUnitMs: 1_000 });
    const asked = Array.from({ length: 35 }, () => gate.retryAfterMs());
    expect(gate.deferredTotal).toBe(35);
    // Deferrals 1–10 get up to 2 units, 11–20 up to 3, 21–30 up to 4, 31–35 up to 5.
    expect(asked[0]).toBe(1_999);
    expect(asked[9]).toBe(1_999);
    expect(asked[10]).toBe(2_999);
    expect(asked[34]).toBe(4_999);
    draw = 0;
    expect(gate.retryAfterMs()).toBe(1_000);
    // A new window starts the count again.
    clock.advance(1_000);
    draw = 0.999_999;
    expect(gate.retryAfterMs()).toBe(1_999);
  });
});
