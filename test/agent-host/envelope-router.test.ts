import { describe, expect, it } from 'vitest';
import { EnvelopeRouter } from '../../agent-host/envelope-router.js';

/** A promise the test settles by hand. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** Lets every queued microtask and promise job run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('EnvelopeRouter', () => {
  it('keeps order within a queue and lets other queues pass a stuck one', async () => {
    const router = new EnvelopeRouter(() => undefined);
    const log: string[] = [];
    const stuck = deferred();
    router.enqueue('a', async () => {
      log.push('a1');
      await stuck.promise;
      log.push('a1 done');
    });
    router.enqueue('a', () => void log.push('a2'));
    router.enqueue('b', () => void log.push('b1'));
    router.enqueue('b', () => void log.push('b2'));
    await settle();
    expect(log).toEqual(['a1', 'b1', 'b2']);
    expect(router.queueCount).toBe(1);
    stuck.resolve();
    await router.idle();
    expect(log).toEqual(['a1', 'b1', 'b2', 'a1 done', 'a2']);
    // Nothing of a queue stays once it is empty.
    expect(router.queueCount).toBe(0);
  });

  it('runs a barrier after all earlier work and before all later work', async () => {
    const router = new EnvelopeRouter(() => undefined);
    const log: string[] = [];
    const slow = deferred();
    router.enqueue('a', async () => {
      await slow.promise;
      log.push('a1');
    });
    router.enqueue('b', () => void log.push('b1'));
    router.barrier(() => void log.push('welcome'));
    router.enqueue('b', () => void log.push('b2'));
    router.enqueue('c', () => void log.push('c1'));
    await settle();
    expect(log).toEqual(['b1']);
    slow.resolve();
    await router.idle();
    expect(log).toEqual(['b1', 'a1', 'welcome', 'b2', 'c1']);
    expect(router.queueCount).toBe(0);
  });

  it('reports a failed task and carries on with its queue', async () => {
    const errors: [unknown, string | undefined][] = [];
    const router = new EnvelopeRouter((err, key) => errors.push([err, key]));
    const log: string[] = [];
    router.enqueue('a', () => {
      throw new Error('boom');
    });
    router.enqueue('a', () => void log.push('a2'));
    router.barrier(() => Promise.reject(new Error('welcome failed')));
    router.enqueue('a', () => void log.push('a3'));
    await router.idle();
    expect(log).toEqual(['a2', 'a3']);
    expect(errors.map(([err, key]) => [(err as Error).message, key])).toEqual([
      ['boom', 'a'],
      ['welcome failed', undefined],
    ]);
  });
});
