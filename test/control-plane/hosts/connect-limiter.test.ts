import { describe, expect, it } from 'vitest';
import { ConnectLimiter } from '../../../control-plane/hosts/connect-limiter.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';

function limiter(clock: FakeClock, logs = new LogCapture()): ConnectLimiter {
  return new ConnectLimiter({ clock, logger: logs.logger, windowMs: 10_000, maxFailuresPerSource: 3, globalBudget: 100, maxSources: 1_000 });
}

describe('ConnectLimiter', () => {
  it('refuses a source unheard after its own failures, until the window rolls; other sources are heard', () => {
    const clock = new FakeClock();
    const l = limiter(clock);
    for (let i = 0; i < 3; i++) {
      expect(l.isRefused('127.0.0.11')).toBe(false);
      l.recordFailure('127.0.0.11');
    }
    expect(l.isRefused('127.0.0.11')).toBe(true);
    expect(l.isRefused('127.0.0.12')).toBe(false);
    clock.advance(10_000);
    expect(l.isRefused('127.0.0.11')).toBe(false);
  });

  it('past the global budget refuses only sources that failed in the window: a clean source is always heard', () => {
    const clock = new FakeClock();
    const l = limiter(clock);
    // 100 sources, one failure each: every one under its own limit, the budget spent.
    for (let i = 0; i < 100; i++) {
      expect(l.isRefused(`127.1.0.${i}`)).toBe(false);
      l.recordFailure(`127.1.0.${i}`);
    }
    expect(l.isRefused('127.1.0.0')).toBe(true);
    expect(l.isRefused('127.1.0.99')).toBe(true);
    // A source with no failure (a genuine host's, wherever the flood names it from) is heard however large the flood.
    expect(l.isRefused('127.0.0.7')).toBe(false);
    clock.advance(10_000);
    expect(l.isRefused('127.1.0.0')).toBe(false);
  });

  it('keeps its table bounded under 100,000 distinct sources (least recently failing forgotten first), and logs once per window', () => {
    const clock = new FakeClock();
    const logs = new LogCapture();
    // A budget no flood reaches in one window: every failure is recorded, so only eviction bounds the table.
    const l = new ConnectLimiter({ clock, logger: logs.logger, windowMs: 10_000, maxFailuresPerSource: 3, globalBudget: 1_000_000, maxSources: 1_000 });
    let refused = 0;
    let peak = 0;
    for (let i = 0; i < 100_000; i++) {
      const source = `src-${i}`;
      if (l.isRefused(source)) refused++;
      l.recordFailure(source);
      peak = Math.max(peak, l.trackedSources);
    }
    expect(refused).toBe(0);
    expect(peak).toBe(1_000);
    expect(l.peakTrackedSources).toBe(1_000);
    // The newest are remembered (refused after their own limit); the oldest were forgotten.
    for (let k = 0; k < 2; k++) l.recordFailure('src-99999');
    expect(l.isRefused('src-99999')).toBe(true);
    for (let k = 0; k < 2; k++) l.recordFailure('src-0');
    expect(l.isRefused('src-0')).toBe(false);
    for (let k = 0; k < 50; k++) expect(l.tryHear('src-99999')).toBeUndefined();
    // Not a line per attempt: the window's counts, once, when it rolls; the busiest source named.
    expect(logs.records().filter((r) => r.msg === 'host connects with bad credentials')).toEqual([]);
    clock.advance(10_000);
    expect(l.isRefused('src-1')).toBe(false);
    const warnings = logs.records().filter((r) => r.msg === 'host connects with bad credentials');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ failures: 100_004, unheard: 50, sources: 1_000, topSource: 'src-99999', topFailures: 3 });
    expect(l.trackedSources).toBe(0);
  });
});

describe('ConnectLimiter.tryHear', () => {
  it('charges a heard attempt from the start, so attempts in flight cannot exceed the limit; success refunds it', () => {
    const clock = new FakeClock();
    const l = limiter(clock);
    // 10 attempts from one source arrive together: only the limit's worth is heard.
    const heard = Array.from({ length: 10 }, () => l.tryHear('127.0.0.11'));
    expect(heard.filter((a) => a !== undefined)).toHaveLength(3);
    // One was a genuine credential: refunded, so one more may be heard; the failures keep their charge.
    heard[0]?.settle(false);
    heard[1]?.settle(true);
    heard[2]?.settle(true);
    heard[2]?.settle(false);
    const next = l.tryHear('127.0.0.11');
    expect(next).toBeDefined();
    expect(l.tryHear('127.0.0.11')).toBeUndefined();
    next?.settle(false);
    // Refunds leave no entry behind.
    const other = l.tryHear('127.0.0.19');
    other?.settle(false);
    expect(l.trackedSources).toBe(1);
  });

  it('a charge from a rolled window is not refunded into the next one', () => {
    const clock = new FakeClock();
    const l = limiter(clock);
    const a = l.tryHear('127.0.0.11');
    clock.advance(10_000);
    for (let i = 0; i < 3; i++) l.recordFailure('127.0.0.11');
    a?.settle(false);
    expect(l.isRefused('127.0.0.11')).toBe(true);
  });
});
