/**
 * The raw baselines: plain grpc-js with no Tether on top, byte buffers in and
 * out (no protobuf), so a ratio against them is what Tether costs over the
 * transport. A bidi push (honouring `write() === false` and `drain`) and a
 * unary echo, each a server on 127.0.0.1:0 and a client of its own.
 */
import * as grpc from '@grpc/grpc-js';
import { BOUND_MS, within } from './bench-support.js';

const identity = (value: Buffer): Buffer => value;

function method(path: string, requestStream: boolean, responseStream: boolean): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path,
    requestStream,
    responseStream,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
    originalName: path,
  };
}

const PUSH = method('/bench.Raw/Push', true, true);
const ECHO = method('/bench.Raw/Echo', false, false);
const SERVICE: grpc.ServiceDefinition = { push: PUSH, echo: ECHO };

/** A raw grpc-js server and one client connection to it. */
export class RawGrpc {
  readonly #server: grpc.Server;
  readonly #client: grpc.Client;

  private constructor(server: grpc.Server, client: grpc.Client) {
    this.#server = server;
    this.#client = client;
  }

  /**
   * Starts the server: `Push` answers a request of (count, size) with `count`
   * messages of `size` bytes, as fast as flow control lets it; `Echo` answers
   * each request with itself.
   */
  static async start(channelOptions: grpc.ChannelOptions = {}): Promise<RawGrpc> {
    const server = new grpc.Server();
    server.addService(SERVICE, {
      push: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
        call.on('error', () => undefined);
        call.on('data', (request: Buffer) => {
          const count = request.readUInt32BE(0);
          const message = Buffer.alloc(request.readUInt32BE(4), 7);
          let written = 0;
          const pump = (): void => {
            while (written < count) {
              written++;
              if (!call.write(message)) {
                call.once('drain', pump);
                return;
              }
            }
          };
          pump();
        });
        call.on('end', () => call.end());
      },
      echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => callback(null, call.request),
    });
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, bound) => (err === null ? resolve(bound) : reject(err)));
    });
    const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1, ...channelOptions });
    await within(
      new Promise<void>((resolve, reject) => client.waitForReady(Date.now() + BOUND_MS, (err) => (err === undefined || err === null ? resolve() : reject(err)))),
      'raw channel ready',
    );
    return new RawGrpc(server, client);
  }

  /** Opens a push stream; `push(count, size)` resolves once `count` more messages arrived (`onMessage` sees each). */
  openPush(onMessage: (message: Buffer) => void = () => undefined): { push: (count: number, size: number) => Promise<void>; close: () => void } {
    const call = this.#client.makeBidiStreamRequest<Buffer, Buffer>(PUSH.path, identity, identity);
    let expected = 0;
    let received = 0;
    let done: (() => void) | undefined;
    call.on('data', (message: Buffer) => {
      received++;
      onMessage(message);
      if (received === expected) done?.();
    });
    call.on('error', () => undefined);
    return {
      push: (count, size) =>
        within(
          new Promise<void>((resolve) => {
            expected += count;
            done = resolve;
            const request = Buffer.alloc(8);
            request.writeUInt32BE(count, 0);
            request.writeUInt32BE(size, 4);
            call.write(request);
          }),
          `${count} raw messages`,
        ),
      close: () => {
        call.end();
        call.cancel();
      },
    };
  }

  /** One unary echo of `payload`. */
  echo(payload: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.#client.makeUnaryRequest(ECHO.path, identity, identity, payload, { deadline: Date.now() + BOUND_MS }, (err, res) =>
        err !== null || res === undefined ? reject(err ?? new Error('no response')) : resolve(res),
      );
    });
  }

  /** Closes the client and the server. */
  async close(): Promise<void> {
    this.#client.close();
    await new Promise<void>((resolve) => this.#server.tryShutdown(() => resolve()));
  }
}
