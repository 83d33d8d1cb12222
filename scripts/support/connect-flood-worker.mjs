// The attacker's side of a Connect flood, in its own thread (see connect-flood.ts): many
// connections, several attempts in flight on each, every one a forged `Join <host id>.<random
// secret>` that waits only for its status. Two kinds of client: `grpc-js` (a channel per
// connection, as a scripted attacker would use) and `http2` (raw HTTP/2 requests that never end
// their side: the server must answer and reset each one, or it would keep them; an attempt the
// server leaves open past its deadline is counted as `held`). Plain JavaScript, so the worker
// needs no TypeScript loader; bounded in count (`attempts`), per attempt (a deadline) and in all
// (`maxMs`: no new attempt starts after it).
import { randomBytes } from 'node:crypto';
import { connect } from 'node:http2';
import { performance } from 'node:perf_hooks';
import { clearTimeout, setTimeout } from 'node:timers';
import { parentPort, workerData } from 'node:worker_threads';
import * as grpc from '@grpc/grpc-js';

const { target, client: kind, attempts, channels, inFlightPerChannel, hostIds, progressEvery, attemptDeadlineMs, maxMs } = workerData;
const CONNECT = '/tether.v1.HostService/Connect';
// The attacker's own cost, not the server's: no stack traces for the errors grpc-js builds per refused call.
Error.stackTraceLimit = 0;
process.setSourceMapsEnabled?.(false);

const forged = (i) => `Join ${hostIds[i % hostIds.length]}.${randomBytes(16).toString('base64url')}`;

/** A grpc-js attempt: opened, never written to or ended; resolves with its status code. */
function grpcAttempt(client, i) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', forged(i));
  const passThrough = (value) => value;
  const call = client.makeBidiStreamRequest(CONNECT, passThrough, passThrough, metadata, { deadline: Date.now() + attemptDeadlineMs });
  return new Promise((resolve) => {
    call.on('error', () => undefined);
    call.on('data', () => undefined);
    call.on('status', (status) => resolve(String(status.code)));
  });
}

/** A raw HTTP/2 attempt that never ends its side: resolves with its grpc-status once the server has let go of the stream, or `held`. */
function http2Attempt(session, i) {
  const stream = session.request(
    { ':method': 'POST', ':path': CONNECT, 'content-type': 'application/grpc', te: 'trailers', authorization: forged(i) },
    { endStream: false },
  );
  return new Promise((resolve) => {
    let code = 'no-status';
    const timer = setTimeout(() => {
      code = 'held';
      stream.close();
    }, attemptDeadlineMs);
    const read = (headers) => {
      if (headers['grpc-status'] !== undefined && code !== 'held') code = String(headers['grpc-status']);
    };
    stream.on('response', read);
    stream.on('trailers', read);
    stream.on('data', () => undefined);
    stream.on('error', () => undefined);
    stream.on('close', () => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

const codes = {};
let next = 0;
let ended = 0;
const startedAt = performance.now();
const connections = Array.from({ length: channels }, () => {
  if (kind === 'http2') {
    const session = connect(`http://${target}`);
    session.on('error', () => undefined);
    return { run: (i) => http2Attempt(session, i), close: () => session.close() };
  }
  const client = new grpc.Client(target, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
  return { run: (i) => grpcAttempt(client, i), close: () => client.close() };
});

async function lane(connection) {
  while (next < attempts && performance.now() - startedAt < maxMs) {
    const code = await connection.run(next++);
    codes[code] = (codes[code] ?? 0) + 1;
    ended++;
    if (ended % progressEvery === 0) parentPort.postMessage({ type: 'progress', ended });
  }
}

await Promise.all(connections.flatMap((connection) => Array.from({ length: inFlightPerChannel }, () => lane(connection))));
for (const connection of connections) connection.close();
parentPort.postMessage({ type: 'done', codes, ended, elapsedMs: performance.now() - startedAt });
