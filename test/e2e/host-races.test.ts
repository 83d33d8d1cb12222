/**
 * Races around one host's stream, on a real control plane: a revoke by another
 * control plane on the same store that lands between a join and its Ack, and a
 * stream that dies while its Hello is still being handled.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Credential } from '../../gen/tether/v1/common.js';
import { call, Harness } from '../support/harness.js';
import { helloEnvelope, RawHostStream } from '../support/raw-host-stream.js';

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
});
