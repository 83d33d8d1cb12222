import { describe, expect, it } from 'vitest';
import { ConnectLimiter } from '../../../control-plane/hosts/connect-limiter.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';

function limiter(clock: FakeClock, logs = new LogCapture()): ConnectLimiter {
  return new ConnectLimiter({ clock, logger: logs.logger, windowMs: 10_000, maxFailuresPerIdentity: 3, globalBudget: 100, maxEntries: 1_000 });
}

describe('ConnectLimiter', () => {
  it('refuses an identity unheard after its own failures, until the window rolls', () => {
    const clock = new FakeClock();
    const l = limiter(clock);
    for (let i = 0; i < 3; i++) {
      expect(l.isRefused('h1')).toBe(false);
      l.recordFailure('h1');
    }
    expect(l.isRefused('h1')).toBe(true);
    expect(l.isRefused('h2')).toBe(false);
    clock.advance(10_000);
    expect(l.isRefused('h1')).toBe(false);
  });

  it('never locks out a host that authenticated recently, whatever is presented under its name', () => {
    const clock = new FakeClock();
    const l = limiter(clock);
    l.recordSuccess('real-host');
    for (let i = 0; i < 10; i++) l.recordFailure('real-host');
    expect(l.isRefused('real-host')).toBe(false);
  });

  it('keeps its table bounded under 100,000 distinct identities, and lets known-good hosts through the flood', () => {
    const clock = new FakeClock();
    const logs = new LogCapture();
    const l = limiter(clock, logs);
    l.recordSuccess('good-host');
    let refused = 0;
    for (let i = 0; i < 100_000; i++) {
      const identity = `attacker-${i}`;
      if (l.isRefused(identity)) refused++;
      else l.recordFailure(identity);
      expect(l.trackedIdentities).toBeLessThanOrEqual(1_000);
    }
    // Past the global budget every unknown identity is refused unheard; the good host is not.
    expect(refused).toBe(100_000 - 100);
    expect(l.isRefused('good-host')).toBe(false);
    expect(l.isRefused('new-host')).toBe(true);
    // Logged once per window, as a count, not once per attempt.
    clock.advance(10_000);
    expect(l.isRefused('new-host')).toBe(false);
    const warnings = logs.records().filter((r) => r.msg === 'host connects with bad credentials');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ failures: 100 });
  });

  it('keeps its table bounded when every one of 100,000 distinct identities is heard and fails (oldest forgotten first)', () => {
    const clock = new FakeClock();
    const logs = new LogCapture();
    // A budget no flood reaches in one window: every failure is recorded, so only eviction bounds the table.
    const l = new ConnectLimiter({ clock, logger: logs.logger, windowMs: 10_000, maxFailuresPerIdentity: 3, globalBudget: 1_000_000, maxEntries: 1_000 });
    let peak = 0;
    for (let i = 0; i < 100_000; i++) {
      const identity = `attacker-${i}`;
      expect(l.isRefused(identity)).toBe(false);
      l.recordFailure(identity);
      peak = Math.max(peak, l.trackedIdentities);
    }
    expect(peak).toBe(1_000);
    // The newest are remembered (refused after their own limit); the oldest were forgotten.
    for (let k = 0; k < 2; k++) l.recordFailure('attacker-99999');
    expect(l.isRefused('attacker-99999')).toBe(true);
    for (let k = 0; k < 2; k++) l.recordFailure('attacker-0');
    expect(l.isRefused('attacker-0')).toBe(false);
  });

  it('keeps the table of recently good identities bounded too', () => {
    const clock = new FakeClock();
    const l = limiter(clock);
    for (let i = 0; i < 100_000; i++) l.recordSuccess(`host-${i}`);
    expect(l.trustedIdentities).toBe(1_000);
    expect(l.trackedIdentities).toBe(0);
  });
});
