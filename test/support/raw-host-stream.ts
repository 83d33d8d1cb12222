import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { PROTOCOL_VERSION, REFUSAL_METADATA_KEY } from '../../common/protocol.js';
import { HostServiceClient, type ControlMessage, type Hello, type HostMessage, type RunningAgent } from '../../gen/tether/v1/host.js';
import { HANG_BOUND_MS } from './wait.js';

/** How a raw stream ended: its status, and the final refusal its trailers carried, if any. */
export interface RawStreamEnd {
  code: grpc.status;
  details: string;
  /** The `tether-refusal` trailer, or undefined when the refusal is a passing one. */
  refusal: string | undefined;
}

/** A Hello as the real host sends it, with `overrides` applied. */
export function helloEnvelope(overrides: Partial<Hello> & { running?: RunningAgent[] } = {}): HostMessage {
  return {
    hello: {
      protocolVersion: PROTOCOL_VERSION,
      version: 'raw-test-host',
      capacity: 0,
      labels: [],
      allowedCommands: [],
      modules: ['idle'],
      running: [],
      ended: [],
      ...overrides,
      // Unset, as a host that predates batches leaves it: one Deliver per message.
      acceptsDeliverBatch: overrides.acceptsDeliverBatch ?? false,
    },
  };
}

/**
 * A hand-driven `HostService.Connect` stream: the test decides what the "host"
 * sends and when (or whether) it acknowledges, which the real host never lets
 * it do. Every envelope received is kept in order; `next` hands each out once.
 * Owns its own client; `close()` cancels the stream and closes the client.
 */
export class RawHostStream {
  /** Every envelope received so far, in order. */
  readonly received: ControlMessage[] = [];
  /** Settles with how the stream ended. */
  readonly ended: Promise<RawStreamEnd>;
  readonly #client: HostServiceClient;
  readonly #call: grpc.ClientDuplexStream<HostMessage, ControlMessage>;
  readonly #arrivals = new EventEmitter<{ message: [] }>();
  readonly #handedOut = new Set<number>();
  #isEnded = false;

  private constructor(target: string, authorization: string) {
    this.#client = new HostServiceClient(target, grpc.credentials.createInsecure());
    const metadata = new grpc.Metadata();
    metadata.set('authorization', authorization);
    this.#call = this.#client.connect(metadata);
    this.#call.on('data', (message: ControlMessage) => {
      this.received.push(message);
      this.#arrivals.emit('message');
    });
    // The status carries the outcome; the error event duplicates it.
    this.#call.on('error', () => undefined);
    this.ended = new Promise<RawStreamEnd>((resolve) => {
      this.#call.on('status', (status: grpc.StatusObject) => {
        this.#isEnded = true;
        this.#arrivals.emit('message');
        const refusal = status.metadata.get(REFUSAL_METADATA_KEY)[0];
        resolve({ code: status.code, details: status.details, refusal: typeof refusal === 'string' ? refusal : undefined });
      });
    });
  }

  /** Opens a stream to `target` with `authorization` (`Join ID.SECRET` or `Bearer <host JWT>`). Nothing is sent yet. */
  static open(target: string, authorization: string): RawHostStream {
    return new RawHostStream(target, authorization);
  }

  /** Sends one envelope. */
  send(message: HostMessage): void {
    this.#call.write(message);
  }

  /**
   * Resolves with the first envelope received (now or later) that matches and
   * was not handed out before; fails after the hang bound, or if the stream
   * ends without one.
   */
  next(match: (message: ControlMessage) => boolean, what: string, boundMs = HANG_BOUND_MS): Promise<ControlMessage> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        for (let i = 0; i < this.received.length; i++) {
          const message = this.received[i];
          if (message === undefined || this.#handedOut.has(i) || !match(message)) continue;
          this.#handedOut.add(i);
          cleanup();
          resolve(message);
          return;
        }
        if (this.#isEnded) {
          cleanup();
          reject(new Error(`the stream ended without ${what}`));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for ${what}`));
      }, boundMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.#arrivals.off('message', check);
      };
      this.#arrivals.on('message', check);
      check();
    });
  }

  /** Cancels the stream (the control plane sees it end) and closes the client. Idempotent. */
  close(): void {
    this.#call.cancel();
    this.#client.close();
  }
}
