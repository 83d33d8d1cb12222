import * as grpc from '@grpc/grpc-js';
import { PROTOCOL_VERSION } from '../../common/protocol.js';
import { HostServiceClient, type ControlMessage, type HostMessage, type RunningAgent } from '../../gen/tether/v1/host.js';
import { waitUntil } from './wait.js';

/**
 * A host that speaks `HostService.Connect` envelope by envelope, on a real
 * stream to a real control plane, so a test can do what a well-behaved host
 * never would at a chosen moment (leave an Ack unsent, go away right after a
 * Skip) and see exactly which envelopes the control plane sends.
 */
export class RawHost {
  /** Every envelope received, in order. */
  readonly received: ControlMessage[] = [];
  readonly #client: HostServiceClient;
  readonly #call: grpc.ClientDuplexStream<HostMessage, ControlMessage>;
  readonly #ended: Promise<grpc.StatusObject>;

  private constructor(target: string, authorization: string) {
    this.#client = new HostServiceClient(target, grpc.credentials.createInsecure());
    const metadata = new grpc.Metadata();
    metadata.set('authorization', authorization);
    this.#call = this.#client.connect(metadata);
    this.#call.on('data', (message: ControlMessage) => void this.received.push(message));
    // The status carries the outcome; the error event duplicates it.
    this.#call.on('error', () => undefined);
    this.#ended = new Promise((resolve) => this.#call.on('status', resolve));
  }

  /**
   * Opens a stream with `authorization` (`Join ID.SECRET` or `Bearer <host token>`) and says Hello;
   * as a host that predates DeliverBatch unless `acceptsDeliverBatch`.
   */
  static connect(target: string, authorization: string, running: RunningAgent[] = [], modules: string[] = ['idle'], acceptsDeliverBatch = false): RawHost {
    const host = new RawHost(target, authorization);
    host.send({
      hello: { protocolVersion: PROTOCOL_VERSION, version: 'raw', capacity: 0, labels: [], allowedCommands: [], modules, running, ended: [], acceptsDeliverBatch },
    });
    return host;
  }

  /** Sends one envelope. */
  send(message: HostMessage): void {
    this.#call.write(message);
  }

  /** Resolves with the first envelope received that satisfies `match` (waiting for it up to the hang bound). */
  async first(match: (message: ControlMessage) => boolean, what: string): Promise<ControlMessage> {
    await waitUntil(() => this.received.some(match), what);
    return this.received.find(match) as ControlMessage;
  }

  /** Ends the stream from this side and waits for its status; closes the client. Idempotent. */
  async close(): Promise<grpc.StatusObject> {
    this.#call.end();
    this.#call.cancel();
    const status = await this.#ended;
    this.#client.close();
    return status;
  }
}
