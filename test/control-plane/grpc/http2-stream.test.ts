/**
 * The reset of a refused stream, on a bare grpc-js server (no control plane):
 * grpc-js answers a call it refuses early with trailers and keeps the HTTP/2
 * stream half-closed until the client ends its side; a client that never does
 * made the server keep every stream it opened. Also guards the one reach into
 * grpc-js internals (`http2StreamOf`) against an upgrade that moves it.
 */
import { connect, type ClientHttp2Session } from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { http2StreamOf, resetWhenAnswered } from '../../../control-plane/grpc/http2-stream.js';
import { HostServiceClient, HostServiceService, type ControlMessage, type HostMessage } from '../../../gen/tether/v1/host.js';
import { nextEvent } from '../../support/wait.js';

/** Starts a server whose Connect refuses at once (resetting the stream when `isResetting`); counts HTTP/2 streams still open. */
async function refusingServer(isResetting: boolean): Promise<{ server: grpc.Server; port: number; open: () => number; found: () => number }> {
  let open = 0;
  let found = 0;
  const server = new grpc.Server();
  server.addService(HostServiceService, {
    connect: (call: grpc.ServerDuplexStream<HostMessage, ControlMessage>) => {
      const stream = http2StreamOf(call);
      if (stream !== undefined) {
        found++;
        open++;
        stream.once('close', () => void open--);
      }
      call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: 'refused', metadata: new grpc.Metadata() });
      if (isResetting && stream !== undefined) resetWhenAnswered(stream);
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, bound) => (err === null ? resolve(bound) : reject(err))),
  );
  return { server, port, open: () => open, found: () => found };
}

/** A raw Connect that never ends its side: resolves with the gRPC status it was given and how the stream closed. */
async function halfOpenConnect(session: ClientHttp2Session): Promise<{ grpcStatus: string | undefined; closed: Promise<number> }> {
  const stream = session.request({ ':method': 'POST', ':path': '/tether.v1.HostService/Connect', 'content-type': 'application/grpc', te: 'trailers' });
  stream.on('data', () => undefined);
  stream.on('error', () => undefined);
  const response = await nextEvent<Record<string, string | undefined>>(stream, 'response');
  return { grpcStatus: response['grpc-status'], closed: nextEvent<void>(stream, 'close').then(() => stream.rstCode ?? -1) };
}

describe('resetWhenAnswered', () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanup of cleanups.splice(0)) cleanup();
  });

  it('finds the HTTP/2 stream under a grpc-js server call, and resets it once the refusal is out (the client never ends its side)', async () => {
    const s = await refusingServer(true);
    cleanups.push(() => s.server.forceShutdown());
    const session = connect(`http://127.0.0.1:${s.port}`);
    session.on('error', () => undefined);
    cleanups.push(() => session.destroy());

    const streams = await Promise.all(Array.from({ length: 20 }, () => halfOpenConnect(session)));
    expect(s.found()).toBe(20);
    for (const { grpcStatus, closed } of streams) {
      // The status came first, then a reset with NO_ERROR (not a cancel): the server let go of the stream.
      expect(grpcStatus).toBe(String(grpc.status.UNAUTHENTICATED));
      expect(await closed).toBe(0);
    }
    await nextEventLoopTurns();
    expect(s.open()).toBe(0);
  });

  it('still gives a grpc-js client the refusal status, not the reset', async () => {
    const s = await refusingServer(true);
    cleanups.push(() => s.server.forceShutdown());
    const client = new HostServiceClient(`127.0.0.1:${s.port}`, grpc.credentials.createInsecure());
    cleanups.push(() => client.close());
    for (let i = 0; i < 20; i++) {
      const call = client.connect(new grpc.Metadata());
      call.on('error', () => undefined);
      call.on('data', () => undefined);
      const ended = nextEvent<grpc.StatusObject>(call, 'status');
      call.write({ ping: { timeMs: 1 } });
      const statusObject = await ended;
      expect(statusObject.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(statusObject.details).toBe('refused');
    }
  });

  it('is needed: without it, grpc-js keeps every refused stream the client leaves open', async () => {
    const s = await refusingServer(false);
    cleanups.push(() => s.server.forceShutdown());
    const session = connect(`http://127.0.0.1:${s.port}`);
    session.on('error', () => undefined);
    cleanups.push(() => session.destroy());
    const streams = await Promise.all(Array.from({ length: 20 }, () => halfOpenConnect(session)));
    for (const { grpcStatus } of streams) expect(grpcStatus).toBe(String(grpc.status.UNAUTHENTICATED));
    await nextEventLoopTurns();
    // Answered, yet every one still open on the server (this is the behaviour the reset exists for).
    expect(s.open()).toBe(20);
    const closed = nextEvent<void>(session, 'close');
    session.destroy();
    await closed;
  });
});

/** A few turns of the event loop, so frames already received are processed (not a sleep: no time passes on purpose). */
async function nextEventLoopTurns(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}
