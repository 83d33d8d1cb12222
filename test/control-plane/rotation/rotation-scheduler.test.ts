import { afterEach, describe, expect, it } from 'vitest';
import type { Clock } from '../../../common/clock.js';
import { RotationScheduler, type RotationSchedulerOptions } from '../../../control-plane/rotation/rotation-scheduler.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';
import { signalAndSources, signalRetention } from '../../support/signal-retention.js';
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

  function start(options: Partial<RotationSchedulerOptions> = {}, sleptOn?: Set<AbortSignal>): RotationScheduler {
    clock = new FakeClock();
    const fake = clock;
    // Records every signal the scheduler sleeps on, and what any of them was combined from.
    const recording: Clock = {
      now: () => fake.now(),
      sleep: (ms, signal) => {
        if (signal !== undefined) for (const held of signalAndSources(signal)) sleptOn?.add(held);
        return fake.sleep(ms, signal);
      },
    };
    logs = new LogCapture();
    rotated = [];
    scheduler = new RotationScheduler({
      clock: recording,
      logger: logs.logger,
      maxPerSecond: 1_000,
      tokenTtlMs: 3_600_000,
      rotate: (agentId) => {
        rotated.push(agentId);
        return Promise.resolve();
      },
      ...options,
    });
    scheduler.start();
    return scheduler;
  }

  /**
   * Resolves once the loop waits on the clock again, polling once per event-loop turn (bounded in
   * turns) rather than on a timer: for loops of thousands of wakes.
   */
  async function asleepSoon(): Promise<void> {
    for (let turn = 0; turn < 10_000; turn++) {
      if (clock.pendingTimers === 1) return;
      await new Promise((resolve) => setImmediate(resolve));
    }
    throw new Error('the scheduler never went back to sleep');
  }

  /** Resolves once the loop waits on the clock again. */
  async function asleep(): Promise<void> {
    await waitUntil(() => clock.pendingTimers === 1, 'the scheduler to wait on the clock');
  }

  it('rotates each agent with the reason it was last scheduled for, kept across a failed try', async () => {
    const reasons: string[] = [];
    let isFirstTry = true;
    const s = start({
      retryDelayMs: 100,
      rotate: (agentId, reason) => {
        reasons.push(`${agentId}:${reason}`);
        if (agentId === 'revoked' && isFirstTry) {
          isFirstTry = false;
          return Promise.reject(new Error('store busy'));
        }
        return Promise.resolve();
      },
    });
    const t0 = clock.now();
    s.schedule('plain', t0, t0 + 2_000);
    s.schedule('revoked', t0, t0 + 1_000, 'key-revoked');
    // Scheduled as due, then rescheduled sooner for another reason: the later reason is the one counted.
    s.schedule('back', t0 + 500, t0 + 3_000);
    s.schedule('back', t0, t0 + 3_000, 'resume');
    await waitUntil(() => reasons.length === 3, 'three rotations tried');
    await asleep();
    clock.advance(100);
    await waitUntil(() => reasons.length === 4, 'the failed one tried again');
    expect(reasons).toEqual(['revoked:key-revoked', 'plain:due', 'back:resume', 'revoked:key-revoked']);
  });

  it('tells the soonest expiry over every scheduled agent, due or not (Infinity when none)', async () => {
    const s = start();
    expect(s.lowestExpiresAtMs()).toBe(Infinity);
    const t0 = clock.now();
    // Due later but expiring sooner than the other: not the top of the due-time heap.
    s.schedule('a', t0 + 1_000, t0 + 9_000);
    s.schedule('b', t0 + 5_000, t0 + 6_000);
    s.schedule('c', t0 + 9_000, t0 + 20_000);
    await asleep();
    expect(s.lowestExpiresAtMs()).toBe(t0 + 6_000);
    s.unschedule('b');
    expect(s.lowestExpiresAtMs()).toBe(t0 + 9_000);
  });

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

  // On Node 20 each `AbortSignal.any([closing, wake])` stays registered on `closing` for as long as
  // the scheduler lives (1M wakes ≈ 60 MB). Whatever the scheduler sleeps on, nothing may pile up on it.
  it('leaves nothing attached to any signal it sleeps on, over 10,000 wakes', async () => {
    const sleptOn = new Set<AbortSignal>();
    const s = start({ maxPerSecond: 1 }, sleptOn);
    const t0 = clock.now();
    // One rotation at once, the other after waiting for signing budget: both kinds of sleep happen.
    s.schedule('x', t0, t0 + 60_000);
    s.schedule('y', t0, t0 + 60_000);
    await asleepSoon();
    clock.advance(1_000);
    await waitUntil(() => rotated.length === 2, 'both rotations');
    await asleepSoon();

    for (let i = 0; i < 10_000; i++) {
      s.schedule('a', t0 + 3_600_000 + i, t0 + 7_200_000);
      expect(clock.pendingTimers, 'a schedule() wakes the loop').toBe(0);
      await asleepSoon();
    }

    expect(sleptOn.size).toBeGreaterThan(0);
    let held = 0;
    for (const signal of sleptOn) {
      const { listeners, dependants } = signalRetention(signal);
      held += listeners + dependants;
    }
    // The one sleep in progress holds one listener; nothing else is left behind.
    expect(held).toBeLessThanOrEqual(1);
    expect(s.size).toBe(1);
  });

  it('keeps one heap entry per agent, however often agents are rescheduled or unscheduled', async () => {
    const s = start({ maxPerSecond: 100 });
    const t0 = clock.now();
    const agentIds = Array.from({ length: 1_000 }, (_, i) => `agent-${i}`);
    // A host reconnecting 50 times: every agent rescheduled each time, due later on even rounds and
    // earlier on odd ones, so entries move both ways in the heap.
    for (let round = 0; round < 50; round++) {
      const shiftMs = round % 2 === 0 ? round * 100 : -round * 50;
      agentIds.forEach((agentId, i) => s.schedule(agentId, t0 + 10_000 + shiftMs + ((i * 37) % 1_000), t0 + 100_000 + i));
    }
    agentIds.forEach((agentId, i) => {
      if (i % 2 === 0) s.unschedule(agentId);
    });
    expect(s.size).toBe(500);
    expect(s.heapSize).toBe(500);
    await asleep();

    // Everything falls due; the signing cap keeps most of it waiting on the ready heap, where
    // rescheduling and unscheduling must also leave nothing behind.
    clock.advance(20_000);
    await waitUntil(() => rotated.length === 100, 'the first second of rotations');
    await asleep();
    expect(s.heapSize).toBe(400);
    const waiting = agentIds.filter((agentId, i) => i % 2 === 1 && !rotated.includes(agentId));
    expect(waiting).toHaveLength(400);
    waiting.slice(0, 100).forEach((agentId) => s.unschedule(agentId));
    waiting.slice(100, 200).forEach((agentId) => s.schedule(agentId, clock.now() + 60_000, clock.now() + 120_000));
    expect(s.size).toBe(300);
    expect(s.heapSize).toBe(300);

    for (let second = 1; second <= 2; second++) {
      clock.advance(1_000);
      await waitUntil(() => rotated.length === 100 + 100 * second, `${100 + 100 * second} rotations`);
      await asleep();
    }
    expect(s.heapSize).toBe(100);
    clock.advance(60_000);
    await waitUntil(() => rotated.length === 400, 'the rescheduled rotations');
    await asleep();
    expect(s.heapSize).toBe(0);
    // Every agent still scheduled was rotated once; none that was unscheduled.
    const unscheduled = new Set([...agentIds.filter((_, i) => i % 2 === 0), ...waiting.slice(0, 100)]);
    expect([...rotated].sort()).toEqual(agentIds.filter((agentId) => !unscheduled.has(agentId)).sort());
  });

  it('with an "auto" cap, signs at the rate the scheduled agents need, above the 200/s floor', async () => {
    // 2,000 agents of a 10 s TTL need 2 × 2,000 / 5.5 = 728 rotations a second.
    const s = start({ maxPerSecond: 'auto', tokenTtlMs: 10_000 });
    expect(s.maxPerSecond).toBe(200);
    const t0 = clock.now();
    for (let i = 0; i < 2_000; i++) s.schedule(`agent-${i}`, t0, t0 + 10_000 + i);
    expect(s.maxPerSecond).toBe(728);
    await asleepSoon();
    const atStart = rotated.length;
    clock.advance(1_000);
    // A fixed 200/s would allow 200 more in that second; the sized cap over 600 (it shrinks a little
    // as rotated agents leave the scheduler here, none being scheduled again).
    await waitUntil(() => rotated.length >= atStart + 600, 'a second of rotations at the sized cap');
    await asleepSoon();
    expect(rotated.length - atStart).toBeGreaterThanOrEqual(600);
    expect(logs.text()).not.toContain('too low');
  });

  it('honours a configured cap below the need, and warns once until it suffices again', () => {
    // 100 agents of a 10 s TTL need 37 a second; the cap is 10, crossed at 28 agents.
    const s = start({ maxPerSecond: 10, tokenTtlMs: 10_000 });
    const t0 = clock.now();
    for (let i = 0; i < 100; i++) s.schedule(`agent-${i}`, t0 + 60_000, t0 + 70_000);
    expect(s.maxPerSecond).toBe(10);
    const warnings = (): Record<string, unknown>[] => logs.records().filter((r) => String(r.msg).includes('too low to keep every agent token fresh'));
    expect(warnings()).toHaveLength(1);
    // Warned as the need crossed the cap (at the 28th agent: 2 × 28 / 5.5 → 11).
    expect(warnings()[0]).toMatchObject({ maxPerSecond: 10, neededPerSecond: 11, agents: 28, ttlMs: 10_000 });
    // Fewer agents (need 11 at 30, 10 at 27): still short, no second warning; then enough, then short again: warned again.
    for (let i = 0; i < 70; i++) s.unschedule(`agent-${i}`);
    expect(warnings()).toHaveLength(1);
    for (let i = 70; i < 100; i++) s.unschedule(`agent-${i}`);
    for (let i = 0; i < 100; i++) s.schedule(`again-${i}`, t0 + 60_000, t0 + 70_000);
    expect(warnings()).toHaveLength(2);
  });
});
