/**
 * Races around one host's stream, on a real control plane: a revoke by another
 * control plane on the same store that lands between a join and its Ack, and a
 * stream that dies while its Hello is still being handled.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Store } from '../../control-plane/store/store.js';
import type { Credential } from '../../gen/tether/v1/common.js';
import { call, Harness } from '../support/harness.js';
import { helloEnvelope, RawHostStream } from '../support/raw-host-stream.js';
import { waitUntil } from '../support/wait.js';

/**
 * A Store whose next listing of pending agents (the last step of a Hello:
 * placing the backlog) waits, once armed, until the test releases it.
 */
class PendingListingGate {
  isArmed = false;
  isHeld = false;
  #release: (() => void) | undefined;
  readonly #released = new Promise<void>((resolve) => {
    this.#release = resolve;
  });

  wrap(store: Store): Store {
    return new Proxy(store, {
      get: (target, property, receiver) => {
        const value: unknown = Reflect.get(target, property, receiver);
        if (typeof value !== 'function') return value;
        return async (...args: unknown[]): Promise<unknown> => {
          if (property === 'listAgents' && this.isArmed && (args[0] as { states?: string[] }).states?.join() === 'pending') {
            this.isArmed = false;
            this.isHeld = true;
            await this.#released;
          }
          return (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        };
      },
    });
  }

  release(): void {
    this.#release?.();
  }
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`no ${what}`);
  return value;
}

describe('host races', () => {
  let harness: Harness | undefined;
  const streams: RawHostStream[] = [];

  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    await harness?.close();
    harness = undefined;
  });

  it('keeps a revoke (by another control plane) that lands between a join and its Ack, and ends the stream for good', async () => {
    harness = await Harness.start();
    const h = harness;
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'joiner', joinTtlMs: 0 });
    const raw = RawHostStream.open(h.target, `Join ${enrolled.joinToken}`);
    streams.push(raw);
    raw.send(helloEnvelope());
    const welcome = need((await raw.next((m) => m.welcome !== undefined, 'Welcome')).welcome, 'Welcome');
    const credential: Credential = need(welcome.hostCredential, 'host credential');
    // Another control plane on the same store revokes the host: this one's in-process state knows nothing of it.
    await h.store.updateHost(enrolled.hostId, { state: 'revoked', joinSecretHash: null, joinLeaseSessionId: null });
    raw.send({ ack: { agentId: '', generation: credential.generation, ok: true, error: '', incarnation: 0 } });
    // Envelopes are handled in order: by the time a Ping after the Ack is answered (or the stream ended), the Ack was.
    raw.send({ ping: { timeMs: h.clock.now() } });
    await Promise.race([raw.ended, raw.next((m) => m.pong !== undefined, 'Pong').catch(() => undefined)]);
    expect(await h.store.getHost(enrolled.hostId)).toMatchObject({ state: 'revoked', joinSecretHash: null });
    expect(await raw.ended).toMatchObject({ code: grpc.status.UNAUTHENTICATED, refusal: 'revoked' });
  });

  it('forgets the session of a stream that dies during its Hello at once, and sends nothing into it', async () => {
    const gate = new PendingListingGate();
    harness = await Harness.start({ wrapStore: (store) => gate.wrap(store) });
    const h = harness;
    try {
      // An agent waits for a host; the host's Hello would place it.
      await call(h.admin.dispatchAgent.bind(h.admin), {
        agentId: 'waiting',
        name: '',
        hostId: '',
        hostLabels: [],
        spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
      });
      const started: string[] = [];
      h.cp.events.on('agent-state', (e) => {
        if (e.state === 'starting') started.push(e.agentId);
      });
      const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'brief', joinTtlMs: 0 });
      gate.isArmed = true;
      const raw = RawHostStream.open(h.target, `Join ${enrolled.joinToken}`);
      streams.push(raw);
      raw.send(helloEnvelope());
      await raw.next((m) => m.welcome !== undefined, 'Welcome');
      await waitUntil(() => gate.isHeld, 'the Hello held in its last step');
      expect(h.cp.connectedHosts).toBe(1);

      // The stream dies mid-Hello: the host stops looking connected right away, not when the Hello is done.
      raw.close();
      await waitUntil(() => h.cp.openHostStreams === 0, 'the control plane to see the stream end');
      expect(h.cp.connectedHosts).toBe(0);

      // The rest of the Hello places nothing on the dead stream: the agent still waits for a host.
      gate.release();
      await waitUntil(() => h.logs.text().includes('host stream ended while its Hello was handled'), 'the Hello to finish');
      expect(started).toEqual([]);
      expect(await h.store.getAgent('waiting')).toMatchObject({ state: 'pending', incarnation: 0 });
    } finally {
      gate.release();
    }
  });

  it('ends only the placement an agent event is about, not one another control plane made meanwhile', async () => {
    // Another control plane on the store moves the agent (a new incarnation on another host) between this one's
    // read of the agent and its write of the end: the end must not land on the new placement.
    let movedBy: number | undefined;
    const racing = (store: Store): Store =>
      new Proxy(store, {
        get(target, property, receiver) {
          const value: unknown = Reflect.get(target, property, receiver);
          if (typeof value !== 'function') return value;
          return async (...args: unknown[]): Promise<unknown> => {
            const [agentId, patch] = args as [string, { state?: string }];
            if (property === 'updateAgent' && patch.state === 'exited' && movedBy === undefined) {
              const current = await target.getAgent(agentId);
              movedBy = (current?.incarnation ?? 0) + 1;
              await target.updateAgent(agentId, { incarnation: movedBy, state: 'starting', hostId: 'elsewhere' });
            }
            return (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          };
        },
      });
    harness = await Harness.start({ wrapStore: racing });
    const h = harness;
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'ender', joinTtlMs: 0 });
    const raw = RawHostStream.open(h.target, `Join ${enrolled.joinToken}`);
    streams.push(raw);
    raw.send(helloEnvelope());
    await raw.next((m) => m.welcome !== undefined, 'Welcome');
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'mover',
      name: '',
      hostId: enrolled.hostId,
      hostLabels: [],
      spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
    });
    const start = need((await raw.next((m) => m.startAgent?.agentId === 'mover', 'StartAgent')).startAgent, 'StartAgent');
    raw.send({ agentEvent: { agentId: 'mover', state: 'exited', detail: 'done', incarnation: start.incarnation } });
    raw.send({ ping: { timeMs: h.clock.now() } });
    await raw.next((m) => m.pong !== undefined, 'Pong after the event');
    expect(movedBy).toBe(start.incarnation + 1);
    expect(await h.store.getAgent('mover')).toMatchObject({ state: 'starting', incarnation: start.incarnation + 1, hostId: 'elsewhere' });
  });
});
