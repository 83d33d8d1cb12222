import * as grpc from '@grpc/grpc-js';
import type { Clock } from '../../common/clock.js';
import { PROTOCOL_VERSION } from '../../common/protocol.js';
import type { Credential } from '../../gen/tether/v1/common.js';
import { HostServiceClient, type ControlMessage, type HostMessage } from '../../gen/tether/v1/host.js';

/** What a simulated host reports to the benchmark driving it. */
export interface SimHostHooks {
  /** An agent was started with its first credential. */
  onStart: (agentId: string, credential: Credential) => void;
  /** A rotated credential arrived for an agent. */
  onRotated: (agentId: string, credential: Credential) => void;
}

/**
 * A simulated agent host for scale benchmarks: speaks `HostService.Connect`
 * as the real host does where the control plane can tell (Hello, the host
 * credential acknowledged, each agent reported started, each rotated
 * credential acknowledged with its incarnation, Pings answered), but runs no
 * agents: a thousand of these fit in one process beside the control plane.
 * Each has a connection of its own (`grpc.use_local_subchannel_pool`), as
 * separate machines would. Owns its client; `close()` ends the stream and closes it.
 */
export class SimHost {
  /** Settles once the Welcome arrived (rejects if the stream ends first). */
  readonly welcomed: Promise<void>;
  readonly #client: HostServiceClient;
  readonly #call: grpc.ClientDuplexStream<HostMessage, ControlMessage>;
  readonly #incarnations = new Map<string, number>();

  private constructor(target: string, joinToken: string, clock: Clock, hooks: SimHostHooks) {
    this.#client = new HostServiceClient(target, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Join ${joinToken}`);
    this.#call = this.#client.connect(metadata);
    let onWelcome: () => void = () => undefined;
    let onEnd: (err: Error) => void = () => undefined;
    this.welcomed = new Promise<void>((resolve, reject) => {
      onWelcome = resolve;
      onEnd = reject;
    });
    this.#call.on('error', () => undefined);
    this.#call.on('status', (status: grpc.StatusObject) => onEnd(new Error(`simulated host stream ended: ${grpc.status[status.code]}`)));
    this.#call.on('data', (message: ControlMessage) => {
      if (message.welcome !== undefined) {
        const credential = message.welcome.hostCredential;
        if (credential !== undefined) this.#ack('', credential.generation, 0);
        onWelcome();
      } else if (message.startAgent !== undefined) {
        const start = message.startAgent;
        this.#incarnations.set(start.agentId, start.incarnation);
        if (start.credential !== undefined) hooks.onStart(start.agentId, start.credential);
        this.#send({ agentEvent: { agentId: start.agentId, state: 'started', detail: '', incarnation: start.incarnation } });
      } else if (message.tokenRotated !== undefined) {
        const { agentId, credential } = message.tokenRotated;
        if (credential === undefined) return;
        if (agentId !== '') hooks.onRotated(agentId, credential);
        this.#ack(agentId, credential.generation, this.#incarnations.get(agentId) ?? 0);
      } else if (message.ping !== undefined) {
        this.#send({ pong: { pingTimeMs: message.ping.timeMs, timeMs: clock.now() } });
      }
    });
    this.#send({ hello: { protocolVersion: PROTOCOL_VERSION, version: 'bench-sim-host', capacity: 0, labels: [], allowedCommands: [], modules: ['idle'], running: [], ended: [], acceptsDeliverBatch: false } });
  }

  /** Opens the stream with a join token and says Hello. */
  static connect(target: string, joinToken: string, clock: Clock, hooks: SimHostHooks): SimHost {
    return new SimHost(target, joinToken, clock, hooks);
  }

  #ack(agentId: string, generation: number, incarnation: number): void {
    this.#send({ ack: { agentId, generation, ok: true, error: '', incarnation } });
  }

  #send(message: HostMessage): void {
    this.#call.write(message);
  }

  /** Ends the stream and closes the client. */
  close(): void {
    this.#call.end();
    this.#call.cancel();
    this.#client.close();
  }
}
