import { constants, type ServerHttp2Stream } from 'node:http2';

/**
 * The HTTP/2 stream under a grpc-js server call, or undefined if it cannot be
 * found. grpc-js (1.14) has no public way to it: a `ServerDuplexStreamImpl`
 * keeps its `BaseServerInterceptingCall` in `call`, which keeps the stream in
 * `stream` (server-call.ts, server-interceptors.ts). Only used to reset a
 * stream grpc-js would otherwise keep; test/control-plane/grpc/http2-stream.test.ts
 * fails if an upgrade moves it.
 */
export function http2StreamOf(call: object): ServerHttp2Stream | undefined {
  const inner: unknown = (call as { call?: unknown }).call;
  if (typeof inner !== 'object' || inner === null) return undefined;
  const stream: unknown = (inner as { stream?: unknown }).stream;
  if (typeof stream !== 'object' || stream === null) return undefined;
  const candidate = stream as Partial<ServerHttp2Stream>;
  return typeof candidate.close === 'function' && typeof candidate.respond === 'function' && typeof candidate.rstCode !== 'undefined'
    ? (stream as ServerHttp2Stream)
    : undefined;
}

/**
 * Resets `stream` with NO_ERROR once the server's side of it has ended (its
 * status is out), as RFC 9113 §8.1 allows and gRPC servers in other languages
 * do (grpc/grpc-go#2684): grpc-js answers a call it refuses early and then
 * keeps the stream, half-closed, until the client ends its side, so a client
 * that never does made it hold every stream it opened. Node sends the reset
 * after what is queued (a NO_ERROR close waits for the stream's 'finish').
 */
export function resetWhenAnswered(stream: ServerHttp2Stream): void {
  if (stream.closed || stream.destroyed) return;
  if (stream.writableEnded) {
    stream.close(constants.NGHTTP2_NO_ERROR);
    return;
  }
  stream.once('finish', () => {
    if (!stream.closed && !stream.destroyed) stream.close(constants.NGHTTP2_NO_ERROR);
  });
}
