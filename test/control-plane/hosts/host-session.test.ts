import { PassThrough } from 'node:stream';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { HostSession } from '../../../control-plane/hosts/host-session.js';
import { Hello, type ControlMessage, type HostMessage } from '../../../gen/tether/v1/host.js';

function session(hello: Hello = Hello.fromPartial({})): HostSession {
  // A real Node stream in the place of grpc-js's server stream: HostSession only writes to it.
  const stream = new PassThrough({ objectMode: true });
  stream.resume();
  return new HostSession({ hostId: 'h', sessionId: 's', hello, connectedAtMs: 0, call: stream as unknown as ServerDuplexStream<HostMessage, ControlMessage> });
}

describe('HostSession', () => {
  it('aborts its closed signal on close whether it was asked for before or after', () => {
    const before = session();
    const signal = before.closedSignal;
    expect(signal.aborted).toBe(false);
    expect(before.closedSignal).toBe(signal);
    before.markClosed();
    expect(signal.aborted).toBe(true);

    const after = session();
    after.markClosed();
    expect(after.closedSignal.aborted).toBe(true);
  });

  it('forgets the Hello report (running, ended) and keeps what placement reads', () => {
    const s = session(
      Hello.fromPartial({
        version: 'v1',
        capacity: 3,
        modules: ['idle', 'echo'],
        allowedCommands: [],
        labels: [{ key: 'zone', value: 'a' }],
        running: [{ agentId: 'a1', incarnation: 1 }],
        ended: [{ agentId: 'a2', state: 'stopped', detail: '', incarnation: 1 }],
        acceptsDeliverBatch: true,
      }),
    );
    expect(s.hello.running).toHaveLength(1);
    s.forgetHelloReport();
    expect(s.hello).toMatchObject({ version: 'v1', capacity: 3, modules: ['idle', 'echo'], allowedCommands: [], labels: [{ key: 'zone', value: 'a' }], running: [], ended: [] });
    expect(s.acceptsDeliverBatch).toBe(true);
    // The shared empty list is never written to.
    expect(() => s.hello.running.push({ agentId: 'x', incarnation: 1, generation: 0, tokenExpiresAtMs: 0 } as never)).toThrow(TypeError);
  });
});
