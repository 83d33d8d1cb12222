/**
 * docs/protocol.md, Versions and the Hello row: a Hello of another protocol
 * version ends the stream INVALID_ARGUMENT naming both versions, as a passing
 * failure (no `tether-refusal` trailer, so a host retries rather than exits);
 * so does a stream whose first envelope is not a Hello. The join token is not
 * spent by either: the same token then joins with the right version.
 */
import { afterEach, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { PROTOCOL_VERSION } from '../../common/protocol.js';
import { call, Harness } from '../support/harness.js';
import { helloEnvelope, RawHostStream } from '../support/raw-host-stream.js';

describe('protocol version negotiation', () => {
  let harness: Harness | undefined;
  const streams: RawHostStream[] = [];
  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    await harness?.close();
    harness = undefined;
  });

  function open(h: Harness, authorization: string): RawHostStream {
    const stream = RawHostStream.open(h.target, authorization);
    streams.push(stream);
    return stream;
  }

  it('ends a stream whose Hello speaks another version, or that opens without a Hello, as a passing failure', async () => {
    const h = (harness = await Harness.start());
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'versions', joinTtlMs: 0 });

    const newer = open(h, `Join ${enrolled.joinToken}`);
    newer.send(helloEnvelope({ protocolVersion: PROTOCOL_VERSION + 1 }));
    // No Welcome: the stream ends without one (a Welcome would settle this at once, not at a timeout).
    expect(await newer.next((m) => m.welcome !== undefined, 'Welcome').then(() => 'welcomed', () => 'no welcome')).toBe('no welcome');
    const ended = await newer.ended;
    expect(ended.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(ended.details).toContain(`protocol version ${PROTOCOL_VERSION + 1} is not supported (this control plane speaks ${PROTOCOL_VERSION})`);
    expect(ended.refusal).toBeUndefined();

    const noHello = open(h, `Join ${enrolled.joinToken}`);
    noHello.send({ ping: { timeMs: 1 } });
    const endedWithoutHello = await noHello.ended;
    expect(endedWithoutHello.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(endedWithoutHello.details).toContain('the first envelope must be Hello');
    expect(endedWithoutHello.refusal).toBeUndefined();

    const current = open(h, `Join ${enrolled.joinToken}`);
    current.send(helloEnvelope());
    const welcome = await current.next((m) => m.welcome !== undefined, 'Welcome');
    expect(welcome.welcome?.hostId).toBe(enrolled.hostId);
  });
});
