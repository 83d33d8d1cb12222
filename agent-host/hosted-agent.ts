import type * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { StartAgent } from '../gen/tether/v1/host.js';
import { CredentialHolder } from './credential-holder.js';
import { runHeartbeats } from './heartbeat.js';
import { AgentClient } from './tools/agent-client.js';
import type { AgentContext, AgentInstance, AgentModule } from './tools/agent-module.js';

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

  private constructor(agentId: string, incarnation: number, holder: CredentialHolder, logger: Logger) {
    this.agentId = agentId;
    this.incarnation = incarnation;
    this.holder = holder;
    this.#logger = logger;
  }

  /** Applies the start credential, initialises the module and starts heartbeating. */
  static async start(options: HostedAgentOptions): Promise<HostedAgent> {
    const { start, clock } = options;
    const holder = new CredentialHolder(clock);
    if (start.credential !== undefined) holder.apply(start.credential, options.epoch);
    const logger = options.logger.child({ agentId: start.agentId });
    const agent = new HostedAgent(start.agentId, start.incarnation, holder, logger);
    const client = new AgentClient({ target: options.target, channel: options.channel, source: holder.readOnly() });
    const context: AgentContext = Object.freeze({
      agentId: start.agentId,
      name: start.name,
      config: start.spec?.config ?? '',
      credentials: holder.readOnly(),
      agent: client,
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

  /** Stops heartbeats and the module, then revokes the holder. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    this.#state = 'stopped';
    this.#abort.abort();
    await this.#heartbeats;
    try {
      await this.#instance?.close?.();
    } catch (err) {
      this.#logger.warn({ err }, 'agent module failed to close');
    }
    this.#instance = undefined;
    this.holder.revoke();
  }
}
