/**
 * A re-send of a refused message that fails in the store (a full disk, say)
 * is logged and tried again later: it is never an unhandled rejection (which
 * ends a control plane, and fails this run), and delivery goes on.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Store } from '../../control-plane/store/store.js';
import { advanceUntil } from '../support/advance-until.js';
import { call, Harness } from '../support/harness.js';
import { helloEnvelope, RawHostStream } from '../support/raw-host-stream.js';
import { waitUntil } from '../support/wait.js';

/** A Store whose next `listDeliverable` calls fail as SQLite does on a full disk, once armed. */
class FullDisk {
  failures = 0;
  failed = 0;

  wrap(store: Store): Store {
    return new Proxy(store, {
      get: (target, property, receiver) => {
        const value: unknown = Reflect.get(target, property, receiver);
        if (typeof value !== 'function') return value;
        return (...args: unknown[]): unknown => {
          if (property === 'listDeliverable' && this.failures > 0) {
            this.failures--;
            this.failed++;
            return Promise.reject(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' }));
          }
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
  }
}

describe('a re-send that fails in the store', () => {
  let harness: Harness | undefined;
  let raw: RawHostStream | undefined;
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason);

  afterEach(async () => {
    process.off('unhandledRejection', onUnhandled);
    raw?.close();
    await harness?.close();
    harness = undefined;
  });

  it('is logged and tried again later; the message is delivered', async () => {
    process.on('unhandledRejection', onUnhandled);
    const disk = new FullDisk();
    harness = await Harness.start({ wrapStore: (store) => disk.wrap(store), redeliveryMinDelayMs: 1_000, redeliveryMaxDelayMs: 8_000 });
    const h = harness;
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'nacker', joinTtlMs: 0 });
    raw = RawHostStream.open(h.target, `Join ${enrolled.joinToken}`);
    const stream = raw;
    stream.send(helloEnvelope());
    await stream.next((m) => m.welcome !== undefined, 'Welcome');
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'refuser',
      name: '',
      hostId: enrolled.hostId,
      hostLabels: [],
      spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
    });
    const start = (await stream.next((m) => m.startAgent?.agentId === 'refuser', 'StartAgent')).startAgent;
    const incarnation = start?.incarnation ?? 0;
    await call(h.admin.sendMessages.bind(h.admin), {
      agentId: 'refuser',
      messages: [{ contentType: 'text/plain', payload: Buffer.from('hello'), idempotencyKey: '' }],
    });
    await stream.next((m) => m.deliver?.seq === 1 && m.deliver.attempt === 1, 'the first delivery');

    // Refused; the disk fills before the re-send reads the message again.
    disk.failures = 1;
    stream.send({ ack: { agentId: 'refuser', seq: 1, ok: false, error: 'not now', incarnation } });
    await waitUntil(() => h.logs.text().includes('message refused; will re-send'), 'the refusal recorded');
    await advanceUntil(h.clock, 500, () => disk.failed === 1, 'the re-send to fail');
    const isLogged = (): boolean => h.logs.text().includes('re-send failed; will try again');
    await waitUntil(() => isLogged() || unhandled.length > 0, 'the failure handled (or not)');
    expect(unhandled).toEqual([]);
    expect(isLogged()).toBe(true);

    // The disk has room again: the next try delivers.
    const again = await advanceUntil(h.clock, 500, () => stream.received.some((m) => m.deliver?.seq === 1 && m.deliver.attempt === 2), 'the re-send');
    expect(again).toBeGreaterThan(0);
    expect(unhandled).toEqual([]);
  });
});
