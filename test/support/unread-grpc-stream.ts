import * as http2 from 'node:http2';
import { nextEvent } from './wait.js';

/** What an {@link UnreadGrpcStream} got once read: its messages (undecoded) and its status. */
export interface UnreadStreamEnd {
  messages: Buffer[];
  code: number;
  details: string;
}

/**
 * A server-streaming gRPC call over plain HTTP/2 whose client does not read:
 * unlike a grpc-js client (which drains the socket into its own memory
 * whether the application reads or not), this one leaves the bytes unread, so
 * HTTP/2 flow control stops the server, as a stuck client would. `readAll`
 * reads at last: every message, then the status from the trailers.
 */
export class UnreadGrpcStream {
  readonly #session: http2.ClientHttp2Session;
  readonly #request: http2.ClientHttp2Stream;

  private constructor(session: http2.ClientHttp2Session, request: http2.ClientHttp2Stream) {
    this.#session = session;
    this.#request = request;
  }

  /** Calls `path` on `target` (plaintext) with `requestBytes` (one serialized message) and `headers`; reads nothing. */
  static open(target: string, path: string, requestBytes: Uint8Array, headers: Record<string, string>): UnreadGrpcStream {
    const session = http2.connect(`http://${target}`);
    session.on('error', () => undefined);
    const request = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    request.on('error', () => undefined);
    const frame = Buffer.alloc(5 + requestBytes.length);
    frame.writeUInt32BE(requestBytes.length, 1);
    Buffer.from(requestBytes).copy(frame, 5);
    request.end(frame);
    request.pause();
    return new UnreadGrpcStream(session, request);
  }

  /** Reads everything the server sent, until its trailers; resolves with the messages and the status. */
  async readAll(): Promise<UnreadStreamEnd> {
    const chunks: Buffer[] = [];
    const trailers = nextEvent<http2.IncomingHttpHeaders>(this.#request, 'trailers');
    const ended = nextEvent(this.#request, 'end');
    this.#request.on('data', (chunk: Buffer) => chunks.push(chunk));
    this.#request.resume();
    const status = await trailers;
    await ended;
    const body = Buffer.concat(chunks);
    const messages: Buffer[] = [];
    for (let at = 0; at + 5 <= body.length; ) {
      const length = body.readUInt32BE(at + 1);
      messages.push(body.subarray(at + 5, at + 5 + length));
      at += 5 + length;
    }
    return { messages, code: Number(status['grpc-status']), details: decodeURIComponent(String(status['grpc-message'] ?? '')) };
  }

  close(): void {
    this.#request.close();
    this.#session.close();
  }
}
