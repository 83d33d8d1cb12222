import { describe, expect, it } from 'vitest';
import { Deadlines, type Deadline } from '../../../control-plane/hosts/deadlines.js';
import { FakeClock } from '../../support/fake-clock.js';
import { waitUntil } from '../../support/wait.js';

/** A deadline that records when it fired (and can re-arm itself, as a Ping does). */
class Recorder implements Deadline {
  dueAtMs = 0;
  heapIndex = -1;
  constructor(
    readonly name: string,
    readonly fired: string[],
    readonly onFire: (nowMs: number) => void = () => undefined,
  ) {}
  fire(nowMs: number): void {
    this.fired.push(`${this.name}@${nowMs}`);
    this.onFire(nowMs);
  }
}

/** Lets the wait's continuation run after the clock moved. */
const settle = async (): Promise<void> => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

describe('Deadlines', () => {
  it('fires each in due order on one clock wait, and holds no timer once nothing is scheduled', async () => {
    const clock = new FakeClock(0);
    const errors: unknown[] = [];
    const deadlines = new Deadlines(clock, (err) => errors.push(err));
    const fired: string[] = [];
    const items = [30, 10, 20, 50, 40].map((at) => {
      const item = new Recorder(`d${at}`, fired);
      deadlines.set(item, at);
      return item;
    });
    expect(deadlines.size).toBe(5);
    await waitUntil(() => clock.pendingTimers === 1, 'one wait for all');
    expect(clock.nextTimerDueAtMs).toBe(10);
    clock.advance(25);
    await waitUntil(() => fired.length === 2, 'the two due');
    expect(fired).toEqual(['d10@25', 'd20@25']);
    // Moved later, and one taken out: the rest keep their order.
    deadlines.set(items[0] as Recorder, 45);
    deadlines.delete(items[3] as Recorder);
    deadlines.delete(items[3] as Recorder); // twice: nothing
    expect(deadlines.size).toBe(2);
    clock.advance(100);
    await waitUntil(() => fired.length === 4, 'the rest');
    expect(fired.slice(2)).toEqual(['d40@125', 'd30@125']);
    await waitUntil(() => clock.pendingTimers === 0, 'no timer left');
    expect(deadlines.size).toBe(0);
    expect(errors).toEqual([]);
  });

  it('wakes for an earlier deadline, ends its wait when the last is taken out, and goes on after a throwing one', async () => {
    const clock = new FakeClock(0);
    const errors: unknown[] = [];
    const deadlines = new Deadlines(clock, (err) => errors.push(err));
    const fired: string[] = [];
    const late = new Recorder('late', fired);
    deadlines.set(late, 1_000);
    await waitUntil(() => clock.nextTimerDueAtMs === 1_000, 'waiting for the late one');
    const early = new Recorder('early', fired, () => {
      throw new Error('boom');
    });
    deadlines.set(early, 10);
    await waitUntil(() => clock.nextTimerDueAtMs === 10, 'woken for the early one');
    expect(clock.pendingTimers).toBe(1);
    clock.advance(10);
    await waitUntil(() => fired.length === 1 && errors.length === 1, 'the early one fired (and threw)');
    await waitUntil(() => clock.nextTimerDueAtMs === 1_000, 'back to waiting for the late one');
    deadlines.delete(late);
    await waitUntil(() => clock.pendingTimers === 0, 'the wait ended with nothing left');
    clock.advance(5_000);
    await settle();
    expect(fired).toEqual(['early@10']);
    // Re-armed after going idle: a new wait starts.
    const again = new Recorder('again', fired, (nowMs) => {
      if (nowMs < 5_300) deadlines.set(again, nowMs + 100);
    });
    deadlines.set(again, 5_100);
    for (const atMs of [5_100, 5_200, 5_300]) {
      await waitUntil(() => clock.nextTimerDueAtMs === atMs, `waiting for ${atMs}`);
      clock.advance(atMs - clock.now());
    }
    await waitUntil(() => fired.length === 4 && clock.pendingTimers === 0, 'three firings, then idle');
    expect(fired.slice(1)).toEqual(['again@5100', 'again@5200', 'again@5300']);
  });

  it('clear() unschedules everything and ends the wait', async () => {
    const clock = new FakeClock(0);
    const deadlines = new Deadlines(clock, () => undefined);
    const fired: string[] = [];
    const items = [1, 2, 3].map((i) => new Recorder(`c${i}`, fired));
    for (const item of items) deadlines.set(item, 100 * (items.indexOf(item) + 1));
    await waitUntil(() => clock.pendingTimers === 1, 'waiting');
    deadlines.clear();
    await waitUntil(() => clock.pendingTimers === 0, 'no wait once cleared');
    expect(items.map((i) => i.heapIndex)).toEqual([-1, -1, -1]);
    clock.advance(1_000);
    await settle();
    expect(fired).toEqual([]);
  });
});
