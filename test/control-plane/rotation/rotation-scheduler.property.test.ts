/**
 * The rotation scheduler's promises as properties over generated schedules, on
 * a fake clock: among the rotations that are due, the soonest-expiring goes
 * first; the signing rate never exceeds the cap (a token bucket of
 * `maxPerSecond`); and a storm is smoothed, never dropped (every entry is
 * rotated exactly once, once it is due). Shrunk counterexamples are kept below
 * as regular tests.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RotationScheduler } from '../../../control-plane/rotation/rotation-scheduler.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';

/** One generated agent: when its rotation falls due and when its token expires, relative to the start. */
interface Planned {
  dueInMs: number;
  expiresInMs: number;
}

/**
 * Scheduling that is undone before the run: earlier schedules of the planned
 * agents (replaced by their planned one) and agents scheduled then unscheduled.
 */
interface Churn {
  /** An earlier schedule of planned agent `agent % planned.length`. */
  replaced: readonly (Planned & { agent: number })[];
  /** Agents `x0…` scheduled, then unscheduled once the planned ones are in. */
  removed: readonly Planned[];
}

/** A rotation as the scheduler made it. */
interface Rotation {
  agentId: string;
  atMs: number;
}

/** Event-loop turns a settle may take before it is a hang (the loop has nothing to wait for but itself). */
const MAX_TURNS = 10_000;

/**
 * Resolves once the scheduler waits on the clock again (it is the clock's only
 * user, so one pending timer means its loop is asleep). Bounded in turns.
 */
async function asleep(clock: FakeClock): Promise<void> {
  for (let turn = 0; turn < MAX_TURNS; turn++) {
    if (clock.pendingTimers === 1) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error('the scheduler never went back to sleep');
}

/**
 * Runs one schedule: every agent scheduled at the start (in the generated
 * order), then time moved on in the generated steps and, after them, in steps
 * of one second until nothing is left. Returns the rotations in order.
 */
async function runSchedule(
  planned: readonly Planned[],
  maxPerSecond: number,
  stepsMs: readonly number[],
  churn: Churn = { replaced: [], removed: [] },
): Promise<{ rotations: Rotation[]; t0: number }> {
  const clock = new FakeClock();
  const rotations: Rotation[] = [];
  const scheduler = new RotationScheduler({
    clock,
    logger: new LogCapture().logger,
    maxPerSecond,
    tokenTtlMs: 3_600_000,
    rotate: (agentId) => {
      rotations.push({ agentId, atMs: clock.now() });
      return Promise.resolve();
    },
  });
  const t0 = clock.now();
  try {
    scheduler.start();
    for (const r of churn.replaced) scheduler.schedule(`a${r.agent % planned.length}`, t0 + r.dueInMs, t0 + r.expiresInMs);
    churn.removed.forEach((p, j) => scheduler.schedule(`x${j}`, t0 + p.dueInMs, t0 + p.expiresInMs));
    planned.forEach((p, i) => scheduler.schedule(`a${i}`, t0 + p.dueInMs, t0 + p.expiresInMs));
    churn.removed.forEach((_, j) => scheduler.unschedule(`x${j}`));
    expect(scheduler.heapSize).toBe(planned.length);
    await asleep(clock);
    for (const stepMs of stepsMs) {
      clock.advance(stepMs);
      await asleep(clock);
    }
    // Drain: enough one-second steps for the whole storm at the capped rate, past the last due time.
    const lastDueMs = Math.max(0, ...planned.map((p) => p.dueInMs));
    const drainSteps = Math.ceil(lastDueMs / 1000) + Math.ceil(planned.length / maxPerSecond) + 2;
    for (let i = 0; i < drainSteps && rotations.length < planned.length; i++) {
      clock.advance(1000);
      await asleep(clock);
    }
    expect(scheduler.isSettled()).toBe(true);
  } finally {
    await scheduler.close();
  }
  return { rotations, t0 };
}

/** Checks the three promises on one run. */
function checkPromises(planned: readonly Planned[], maxPerSecond: number, rotations: readonly Rotation[], t0: number): void {
  // None dropped, none twice.
  expect(rotations.map((r) => r.agentId).sort()).toEqual(planned.map((_, i) => `a${i}`).sort());
  const indexOf = (agentId: string): number => Number(agentId.slice(1));
  const rotatedAt = new Map(rotations.map((r) => [r.agentId, r.atMs]));
  for (const [k, rotation] of rotations.entries()) {
    const mine = planned[indexOf(rotation.agentId)] as Planned;
    // Never before it is due.
    expect(rotation.atMs).toBeGreaterThanOrEqual(t0 + mine.dueInMs);
    // Soonest-expiring first: no other agent that was due by now and not yet rotated expires sooner.
    for (const [i, other] of planned.entries()) {
      const otherId = `a${i}`;
      const otherAtMs = rotatedAt.get(otherId) ?? Infinity;
      const isWaiting = t0 + other.dueInMs <= rotation.atMs && rotations.findIndex((r) => r.agentId === otherId) > k;
      if (isWaiting) {
        expect(other.expiresInMs, `${otherId} (due ${other.dueInMs}, expires ${other.expiresInMs}, rotated at ${otherAtMs - t0}) waited while ${rotation.agentId} (expires ${mine.expiresInMs}) went at ${rotation.atMs - t0}`).toBeGreaterThanOrEqual(mine.expiresInMs);
      }
    }
  }
  // The cap: a token bucket holding `maxPerSecond`, refilled at that rate. Between the i-th and j-th
  // rotation there is room for at most the full bucket plus what the elapsed time refilled.
  for (let i = 0; i < rotations.length; i++) {
    for (let j = i; j < rotations.length; j++) {
      const elapsedMs = (rotations[j] as Rotation).atMs - (rotations[i] as Rotation).atMs;
      expect(j - i + 1).toBeLessThanOrEqual(maxPerSecond + Math.floor((elapsedMs * maxPerSecond) / 1000));
    }
  }
}

const plannedArbitrary: fc.Arbitrary<Planned> = fc
  .record({ dueInMs: fc.integer({ min: 0, max: 5_000 }), lifeAfterDueMs: fc.integer({ min: 1, max: 10_000 }) })
  .map(({ dueInMs, lifeAfterDueMs }) => ({ dueInMs, expiresInMs: dueInMs + lifeAfterDueMs }));

describe('RotationScheduler, over generated schedules', () => {
  it('rotates soonest-expiring first among those due, under the signing-rate cap, and drops none', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(plannedArbitrary, { minLength: 1, maxLength: 25 }),
        fc.integer({ min: 1, max: 8 }),
        fc.array(fc.integer({ min: 1, max: 1_500 }), { maxLength: 12 }),
        async (planned, maxPerSecond, stepsMs) => {
          const { rotations, t0 } = await runSchedule(planned, maxPerSecond, stepsMs);
          checkPromises(planned, maxPerSecond, rotations, t0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('keeps its promises when entries were replaced and removed first, one heap entry per agent', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(plannedArbitrary, { minLength: 1, maxLength: 25 }),
        fc.integer({ min: 1, max: 8 }),
        fc.array(fc.integer({ min: 1, max: 1_500 }), { maxLength: 12 }),
        fc.record({
          replaced: fc.array(fc.record({ agent: fc.nat(), dueInMs: fc.integer({ min: 0, max: 5_000 }), expiresInMs: fc.integer({ min: 1, max: 15_000 }) }), { maxLength: 40 }),
          removed: fc.array(plannedArbitrary, { maxLength: 15 }),
        }),
        async (planned, maxPerSecond, stepsMs, churn) => {
          const { rotations, t0 } = await runSchedule(planned, maxPerSecond, stepsMs, churn);
          checkPromises(planned, maxPerSecond, rotations, t0);
        },
      ),
      { numRuns: 150 },
    );
  });

  // Shrunk counterexample: with one rotation a second, a4 (due at once, expires at 2,003 ms) waited
  // for budget while a3 (due at 2,001 ms, expires at 2,002 ms) fell due, and was rotated first because
  // the scheduler had already taken it off the ready heap before it waited.
  it('lets what falls due during a wait for budget go first when it expires sooner', async () => {
    const planned: Planned[] = [
      { dueInMs: 0, expiresInMs: 1 },
      { dueInMs: 0, expiresInMs: 1 },
      { dueInMs: 0, expiresInMs: 1 },
      { dueInMs: 2_001, expiresInMs: 2_002 },
      { dueInMs: 0, expiresInMs: 2_003 },
    ];
    const { rotations, t0 } = await runSchedule(planned, 1, []);
    checkPromises(planned, 1, rotations, t0);
    // a0..a2 expire together (their order among themselves is the heap's); a3 then a4.
    expect(rotations.map((r) => r.agentId).slice(3)).toEqual(['a3', 'a4']);
  });
});
