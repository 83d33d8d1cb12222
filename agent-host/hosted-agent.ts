import type * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { HostMessage, StartAgent } from '../gen/tether/v1/host.js';
import { initialDeliveryState, reduceDelivery, type DeliveryEffect, type DeliveryEvent, type DeliveryState } from './delivery/delivery-reducer.js';
import { CredentialHolder } from './credential-holder.js';
import { runHeartbeats } from './heartbeat.js';
import { AgentClient } from './tools/agent-client.js';
import type { AgentContext, AgentInstance, AgentModule, DeliveredMessage } from './tools/agent-module.js';

/**
 * A hosted agent's lifecycle:
 * - `starting`: its module is being initialised.
 * - `running`: heartbeating; takes messages.
 * - `stopped`: stopped by the control plane or the host; its holder is revoked.
 */
export type HostedAgentState = 'starting' | 'running' | 'stopped';

/** Options of {@link HostedAgent.start}. */
export interface HostedAgentOptions {
  start: StartAgent;
  epoch: string;
  module: AgentModule;
  clock: Clock;
  logger: Logger;
  /** The host's channel to the control plane, shared by all its agents. */
  channel: grpc.Channel;
  target: string;
  heartbeatIntervalMs: () => number;
  onHeartbeat: (result: { isOk: boolean; generation: number; error?: Error }) => void;
  /** Sends an envelope on the host's current stream (dropped while it is down; delivery state makes up for it). */
  send: (message: HostMessage) => void;
  /** Called after each message the agent took. */
  onTaken?: (seq: number) => void;
}

/**
 * One agent on this host: its own {@link CredentialHolder}, its heartbeat loop
 * and its module instance. Owns all three and tears them down in `stop()`.
 */
export class HostedAgent {
  readonly agentId: string;
  readonly incarnation: number;
  readonly holder: CredentialHolder;
  #state: HostedAgentState = 'starting';
  readonly #abort = new AbortController();
  readonly #logger: Logger;
  #instance: AgentInstance | undefined;
  #heartbeats: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #delivery: DeliveryState<DeliveredMessage>;
  #handling: Promise<void> = Promise.resolve();
  readonly #send: (message: HostMessage) => void;
  readonly #onTaken: ((seq: number) => void) | undefined;

  private constructor(options: HostedAgentOptions, holder: CredentialHolder, logger: Logger) {
    this.agentId = options.start.agentId;
    this.incarnation = options.start.incarnation;
    this.holder = holder;
    this.#logger = logger;
    this.#send = options.send;
    this.#onTaken = options.onTaken;
    this.#delivery = initialDeliveryState(options.start.ackedSeq);
  }

  /** Applies the start credential, initialises the module and starts heartbeating. */
  static async start(options: HostedAgentOptions): Promise<HostedAgent> {
    const { start, clock } = options;
    const holder = new CredentialHolder(clock);
    if (start.credential !== undefined) holder.apply(start.credential, options.epoch);
    const logger = options.logger.child({ agentId: start.agentId });
    const agent = new HostedAgent(options, holder, logger);
    const client = new AgentClient({ target: options.target, channel: options.channel, source: holder.readOnly() });
    const context: AgentContext = Object.freeze({
      agentId: start.agentId,
      name: start.name,
      config: start.spec?.config ?? '',
      credentials: holder.readOnly(),
      agent: client,
      clock,
      logger,
      signal: agent.#abort.signal,
    });
    try {
      agent.#instance = await options.module(context);
    } catch (err) {
      holder.revoke();
      throw err;
    }
    agent.#state = 'running';
    agent.#heartbeats = runHeartbeats({
      agentId: start.agentId,
      client,
      clock,
      intervalMs: options.heartbeatIntervalMs,
      signal: agent.#abort.signal,
      onBeat: (result) => {
        if (!result.isOk) logger.warn({ err: result.error, gen: holder.generation }, 'heartbeat failed');
        options.onHeartbeat({ ...result, generation: holder.generation });
      },
    });
    return agent;
  }

  /** The agent's state. */
  get state(): HostedAgentState {
    return this.#state;
  }

  /** Every message up to this seq has been taken (or skipped). */
  get takenSeq(): number {
    return this.#delivery.takenSeq;
  }

  /** A Deliver or Skip from the control plane (duplicates are dropped by seq). */
  onDelivery(event: DeliveryEvent<DeliveredMessage>): void {
    const { state, effects } = reduceDelivery(this.#delivery, event);
    this.#delivery = state;
    for (const effect of effects) this.#carryOut(effect);
  }

  #carryOut(effect: DeliveryEffect<DeliveredMessage>): void {
    switch (effect.type) {
      case 'give':
        this.#handling = this.#handle(effect.seq, effect.message);
        return;
      case 'ack':
        this.#send({ ack: { agentId: this.agentId, seq: effect.seq, ok: true, error: '' } });
        return;
      case 'nack':
        this.#send({ ack: { agentId: this.agentId, seq: effect.seq, ok: false, error: effect.error } });
        return;
    }
  }

  /** Hands one message to the module; its outcome feeds back into the reducer. */
  async #handle(seq: number, message: DeliveredMessage): Promise<void> {
    const instance = this.#instance;
    let outcome: DeliveryEvent<DeliveredMessage>;
    try {
      await instance?.onMessage?.(message);
      outcome = { type: 'taken', seq };
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      this.#logger.info({ seq, error }, 'agent refused a message');
      outcome = { type: 'refused', seq, error: error.slice(0, 512) };
    }
    if (this.#state === 'stopped') return;
    this.onDelivery(outcome);
    if (outcome.type === 'taken') this.#onTaken?.(seq);
  }

  /** Stops heartbeats and the module, then revokes the holder. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    this.#state = 'stopped';
    this.onDelivery({ type: 'stop' });
    this.#abort.abort();
    await this.#heartbeats;
    await this.#handling;
    try {
      await this.#instance?.close?.();
    } catch (err) {
      this.#logger.warn({ err }, 'agent module failed to close');
    }
    this.#instance = undefined;
    this.holder.revoke();
  }
}
