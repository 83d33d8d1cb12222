/**
 * The memory benchmark's raw baseline, run as a child (`node --expose-gc
 * raw-stream-server.mjs` with an IPC channel): a grpc-js server on
 * 127.0.0.1:0 whose one bidi method holds each stream open until the client
 * ends it. Sends `{ type: 'port', port }` once bound; answers `{ type:
 * 'memory' }` with the heap after a full collection and the streams open.
 * Exits when its parent goes.
 */
import * as grpc from '@grpc/grpc-js';

const identity = (value) => value;
const HOLD = { path: '/bench.Raw/Hold', requestStream: true, responseStream: true, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity };
const open = new Set();
const server = new grpc.Server();
server.addService({ hold: HOLD }, {
  hold: (call) => {
    open.add(call);
    const done = () => {
      open.delete(call);
      call.end();
    };
    call.on('error', () => open.delete(call));
    call.on('end', done);
    call.on('cancelled', () => open.delete(call));
    call.write(Buffer.from('ready'));
  },
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err !== null) throw err;
  process.send?.({ type: 'port', port });
});
process.on('message', (message) => {
  if (typeof message !== 'object' || message === null || message.type !== 'memory') return;
  globalThis.gc?.();
  globalThis.gc?.();
  process.send?.({ type: 'memory', heapUsedBytes: process.memoryUsage().heapUsed, streams: open.size });
});
process.on('disconnect', () => process.exit(0));
