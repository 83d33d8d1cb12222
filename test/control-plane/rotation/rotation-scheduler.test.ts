import { afterEach, describe, expect, it } from 'vitest';
import { RotationScheduler, type RotationSchedulerOptions } from '../../../control-plane/rotation/rotation-scheduler.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';
import { waitUntil } from '../../support/wait.js';

/**
 * The scheduler is the only user of the fake clock here, so "the clock has one
 * timer" means its loop is asleep: nothing more happens until time moves or
 * something is scheduled. That is how each test knows the loop has caught up.
 */
describe('RotationScheduler', () => {
  let clock: FakeClock;
  let logs: LogCapture;
  let scheduler: RotationScheduler | undefined;
  let rotated: string[];

  afterEach(async () => {
    await scheduler?.close();
    scheduler = undefined;
  });

  function start(options: Partial<RotationSchedulerOptions> = {}): RotationScheduler {
    clock = new FakeClock();
    logs = new LogCapture();
    rotated = [];
    scheduler = new RotationScheduler({
      clock,
      logger: logs.logger,
      maxPerSecond: 1_000,
      rotate: (agentId) => {
        rotated.push(agentId);
        return Promise.resolve();
      },
      ...options,
    });
    scheduler.start();
    return scheduler;
  }

  /** Resolves once the loop waits on the clock again. */
  async function asleep(): Promise<void> {
    await waitUntil(() => clock.pendingTimers === 1, 'the scheduler to wait on the clock');
  }

  it('rotates nothing before it is due', async () => {
    const s = start();
    const t0 = clock.now();
    s.schedule('a', t0 + 1_000, t0 + 2_000);
    await asleep();
    expect(rotated).toEqual([]);
    expect(s.isSettled()).toBe(true);

    clock.advance(999);
    await asleep();
    expect(rotated).toEqual([]);
    expect(s.size).toBe(1);

    clock.advance(1);
    await waitUntil(() => rotated.length === 1, 'the rotation of a');
    await asleep();
    expect(rotated).toEqual(['a']);
    expect(s.size).toBe(0);
    expect(s.isSettled()).toBe(true);
  });

  it('rotates due entries soonest-expiring first, and only due ones', async () => {
    const s = start();
    const t0 = clock.now();
    s.schedule('a', t0 + 100, t0 + 5_000);
    s.schedule('b', t0 + 200, t0 + 3_000);
    s.schedule('c', t0 + 300, t0 + 4_000);
    // Expires soonest of all, but is not due yet.
    s.schedule('d', t0 + 1_000, t0 + 1_500);
    await asleep();

    clock.advance(300);
    await waitUntil(() => rotated.length === 3, 'three rotations');
    await asleep();
    expect(rotated).toEqual(['b', 'c', 'a']);
    expect(s.isSettled()).toBe(true);

    clock.advance(700);
    await waitUntil(() => rotated.length === 4, 'the rotation of d');
    expect(rotated).toEqual(['b', 'c', 'a', 'd']);
  });

  it('smooths a storm under the signing-rate cap and drops nothing', async () => {
    const s = start({ maxPerSecond: 5 });
    const t0 = clock.now();
    const agentIds = Array.from({ length: 20 }, (_, i) => `agent-${String(i).padStart(2, '0')}`);
    // Scheduled in reverse, so expiry order differs from scheduling order.
    for (const [i, agentId] of [...agentIds.entries()].reverse()) s.schedule(agentId, t0, t0 + 10_000 + i);

    await asleep();
    expect(rotated).toEqual(agentIds.slice(0, 5));
    expect(s.isSettled()).toBe(false);

    for (let second = 1; second <= 3; second++) {
      clock.advance(1_000);
      await waitUntil(() => rotated.length === 5 * (second + 1), `${5 * (second + 1)} rotations after ${second} s`);
      await asleep();
      expect(rotated).toEqual(agentIds.slice(0, 5 * (second + 1)));
    }
    expect(new Set(rotated).size).toBe(20);
    expect(s.size).toBe(0);
    expect(s.isSettled()).toBe(true);
  });

  it('replaces an entry when it is scheduled again', async () => {
    const s = start();
    const t0 = clock.now();
    s.schedule('a', t0 + 100, t0 + 1_000);
    s.schedule('a', t0 + 500, t0 + 2_000);
    expect(s.size).toBe(1);
    await asleep();

    clock.advance(100);
    await asleep();
    expect(rotated).toEqual([]);

    clock.advance(400);
    await waitUntil(() => rotated.length === 1, 'the rotation of a');
    await asleep();
    expect(rotated).toEqual(['a']);
  });

  it('forgets an unscheduled entry', async () => {
    const s = start();
    const t0 = clock.now();
    s.schedule('a', t0 + 100, t0 + 1_000);
    s.schedule('b', t0 + 100, t0 + 2_000);
    s.unschedule('a');
    expect(s.size).toBe(1);
    await asleep();

    clock.advance(100);
    await waitUntil(() => rotated.length === 1, 'the rotation of b');
    await asleep();
    expect(rotated).toEqual(['b']);
    expect(s.size).toBe(0);
  });

  it('retries a failed rotation after the retry delay', async () => {
    let failures = 1;
    const s = start({
      retryDelayMs: 5_000,
      rotate: (agentId) => {
        rotated.push(agentId);
        if (failures-- > 0) return Promise.reject(new Error('store unavailable'));
        return Promise.resolve();
      },
    });
    const t0 = clock.now();
    s.schedule('a', t0 + 100, t0 + 60_000);
    await asleep();

    clock.advance(100);
    await waitUntil(() => rotated.length === 1, 'the first attempt');
    await asleep();
    expect(s.size).toBe(1);
    expect(logs.text()).toContain('rotation failed; will retry');

    clock.advance(4_999);
    await asleep();
    expect(rotated).toEqual(['a']);

    clock.advance(1);
    await waitUntil(() => rotated.length === 2, 'the retry');
    await asleep();
    expect(rotated).toEqual(['a', 'a']);
    expect(s.size).toBe(0);
  });

  it('runs up to maxInFlight rotations at once, soonest-expiring first, and starts the next as one finishes', async () => {
    const releases = new Map<string, () => void>();
    const s = start({
      maxInFlight: 3,
      rotate: (agentId) => {
        rotated.push(agentId);
        return new Promise<void>((resolve) => releases.set(agentId, resolve));
      },
    });
    const t0 = clock.now();
    for (const [i, agentId] of ['e', 'd', 'c', 'b', 'a'].entries()) s.schedule(agentId, t0 + 100, t0 + 1_000 + i);
    await asleep();

    clock.advance(100);
    await waitUntil(() => rotated.length === 3, 'three rotations running at once');
    // Let the loop run on: with three in flight it must start no fourth.
    for (let turn = 0; turn < 10; turn++) await new Promise((resolve) => setImmediate(resolve));
    expect(rotated).toEqual(['e', 'd', 'c']);
    expect(s.isSettled()).toBe(false);

    releases.get('d')?.();
    await waitUntil(() => rotated.length === 4, 'a fourth once one finished');
    for (let turn = 0; turn < 10; turn++) await new Promise((resolve) => setImmediate(resolve));
    expect(rotated).toEqual(['e', 'd', 'c', 'b']);

    for (const agentId of ['e', 'c', 'b']) releases.get(agentId)?.();
    await waitUntil(() => rotated.length === 5, 'the last');
    releases.get('a')?.();
    await asleep();
    expect(s.isSettled()).toBe(true);
    expect(s.size).toBe(0);
  });

  it('stops the loop on close, after the rotation in progress', async () => {
    let release!: () => void;
    const s = start({
      rotate: (agentId) => {
        rotated.push(agentId);
        return new Promise<void>((resolve) => {
          release = resolve;
        });
      },
    });
    const t0 = clock.now();
    s.schedule('a', t0 + 100, t0 + 1_000);
    s.schedule('b', t0 + 200, t0 + 2_000);
    await asleep();

    clock.advance(100);
    await waitUntil(() => rotated.length === 1, 'the rotation of a to begin');
    let isClosed = false;
    const closing = s.close().then(() => {
      isClosed = true;
    });
    await new Promise((resolve) => setImmediate(resolve));
    expect(isClosed).toBe(false);
    release();
    await closing;
    expect(isClosed).toBe(true);

    clock.advance(10_000);
    await new Promise((resolve) => setImmediate(resolve));
    expect(rotated).toEqual(['a']);
    expect(clock.pendingTimers).toBe(0);
  });
});
