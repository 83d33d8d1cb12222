import * as grpc from '@grpc/grpc-js';
import retry from 'retry';
import type { Clock } from '../common/clock.js';
import { FailedPreconditionError, InvalidArgumentError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { isRefusal, PROTOCOL_VERSION, REFUSAL_METADATA_KEY, type Refusal } from '../common/protocol.js';
import { StreamWriter } from '../common/stream-writer.js';
import type { Credential, Label } from '../gen/tether/v1/common.js';
import {
  HostServiceClient,
  type AgentEvent,
  type ControlMessage,
  type Deliver,
  type HostMessage,
  type StartAgent,
  type TokenRotated,
  type Welcome,
} from '../gen/tether/v1/host.js';
import type { AgentEnd, AgentRunnerFactory } from './agent-runner.js';
import type { ApplyResult } from './credential-holder.js';
import { AgentHostEvents } from './events.js';
import type { HostCredentialStore } from './host-credential-store.js';
import { HostedAgent } from './hosted-agent.js';
import { moduleRunner } from './module-runner.js';
import { processRunner } from './process-agent.js';
import type { AgentModule } from './tools/agent-module.js';
import { assertPlaintextAllowed } from './tools/loopback.js';

/** The host software's version, sent in Hello. */
export const HOST_VERSION = '0.1.0';

/** Options of {@link AgentHost}. */
export interface AgentHostOptions {
  /** The control plane, `host:port`. */
  target: string;
  clock: Clock;
  logger: Logger;
  /** Where the host keeps its own credential. */
  credentialStore: HostCredentialStore;
  /** `ID.SECRET`, used only while the store holds no credential. */
  joinToken?: string;
  /** TLS channel credentials; without them, plaintext to loopback only. */
  channelCredentials?: grpc.ChannelCredentials;
  channelOptions?: grpc.ChannelOptions;
  /** Module agents this host can run, by name. */
  modules?: ReadonlyMap<string, AgentModule>;
  /** Commands process agents may run (exactly as given in `spec.command`); none by default. */
  allowedCommands?: readonly string[];
  /**
   * Where process agents get their directories (`<agentsDir>/<agent-id>/`, 0700);
   * required when `allowedCommands` is not empty. `agent-host` uses `<data-dir>/agents`.
   */
  agentsDir?: string;
  /** How long a process agent has between SIGTERM and SIGKILL when stopped. Default 10 s. */
  stopGraceMs?: number;
  /** A CA certificate file process agents are told of (`TETHER_CA_FILE`) to verify a TLS control plane. */
  caFile?: string;
  /** Agents this host will run; 0 for no limit. */
  capacity?: number;
  labels?: readonly Label[];
  /** Reconnect backoff: about 0.5 s doubling to 30 s, jittered. */
  reconnectMinDelayMs?: number;
  reconnectMaxDelayMs?: number;
  /** App-level Ping towards the control plane (and the expiry check). Default 30 s. */
  pingIntervalMs?: number;
  /** Warn when the lowest time-to-expiry of any held token falls below this fraction of the agent token TTL. Default 0.25. */
  expiryWarningFraction?: number;
  /** Transport keepalive ping interval. Production: no faster than 30 s. */
  keepaliveTimeMs?: number;
  keepaliveTimeoutMs?: number;
}

/**
 * The host's lifecycle:
 * - `connecting`: opening the stream, or waiting to retry.
 * - `connected`: Welcome received; envelopes flow.
 * - `refused`: the control plane refused this host for good; it does no more.
 * - `closed`: `close()` was called; agents stopped, stream and channel closed.
 */
export type AgentHostState = 'connecting' | 'connected' | 'refused' | 'closed';

/** How the host's connection loop ended. */
export interface HostExit {
  refusal?: Refusal;
  details?: string;
}

/** What happened to one stream. */
interface StreamOutcome {
  isWelcomed: boolean;
  code: number;
  details: string;
  refusal: Refusal | undefined;
}

/**
 * An agent host: keeps one stream open to the control plane, starts the agents
 * it is told to, applies each rotated credential to that agent's own holder, and
 * reconnects with jittered backoff when the stream is lost (its agents keep
 * running with their current tokens meanwhile).
 */
export class AgentHost {
  /** What happens, as it happens. */
  readonly events = new AgentHostEvents();
  /** Settles when the connection loop ends (refused or closed). */
  readonly done: Promise<HostExit>;
  readonly #options: AgentHostOptions;
  readonly #logger: Logger;
  readonly #channel: grpc.Channel;
  readonly #client: HostServiceClient;
  readonly #agents = new Map<string, HostedAgent>();
  readonly #closing = new AbortController();
  #state: AgentHostState = 'connecting';
  #hostId = '';
  #epoch = '';
  #heartbeatIntervalMs = 30_000;
  #writer: StreamWriter<HostMessage> | undefined;
  #call: grpc.ClientDuplexStream<HostMessage, ControlMessage> | undefined;
  #agentTokenTtlMs = 3_600_000;
  #hostCredentialExpiresAtMs = 0;
  #clockSkewMs = 0;
  #isExpiryWarned = false;
  /** Agents that ended by themselves, until a Welcome follows the Hello that reported them. */
  readonly #unreportedEnds = new Map<string, AgentEvent>();
  /** The ends reported in the Hello of the current stream. */
  #endsInHello: AgentEvent[] = [];
  readonly #expiry: Promise<void>;

  private constructor(options: AgentHostOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'agent-host' });
    if (options.channelCredentials === undefined) assertPlaintextAllowed(options.target);
    if ((options.allowedCommands?.length ?? 0) > 0 && options.agentsDir === undefined) {
      throw new InvalidArgumentError('process agents need a directory: set agentsDir along with allowedCommands');
    }
    const keepaliveTimeMs = options.keepaliveTimeMs ?? 30_000;
    const channelOptions: grpc.ChannelOptions = {
      'grpc.keepalive_time_ms': keepaliveTimeMs,
      'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs ?? 10_000,
      'grpc.keepalive_permit_without_calls': 1,
      // Match the channel's own reconnect backoff to ours (grpc-js defaults to 1 s ×1.6 up to 120 s).
      'grpc.initial_reconnect_backoff_ms': options.reconnectMinDelayMs ?? 500,
      'grpc.max_reconnect_backoff_ms': options.reconnectMaxDelayMs ?? 30_000,
      ...options.channelOptions,
    };
    this.#channel = new grpc.Channel(options.target, options.channelCredentials ?? grpc.credentials.createInsecure(), channelOptions);
    this.#client = new HostServiceClient(options.target, options.channelCredentials ?? grpc.credentials.createInsecure(), {
      channelOverride: this.#channel,
    });
    this.done = this.#run();
    this.#expiry = this.#expiryLoop();
  }

  /** Starts a host; it connects in the background. */
  static start(options: AgentHostOptions): AgentHost {
    return new AgentHost(options);
  }

  /** The host's state. */
  get state(): AgentHostState {
    return this.#state;
  }

  /** The host's id, once welcomed. */
  get hostId(): string {
    return this.#hostId;
  }

  /** The ids of the agents running here. */
  agentIds(): string[] {
    return [...this.#agents.keys()];
  }

  /** An agent's credential generation and expiry, if it runs here. */
  agentCredential(agentId: string): { generation: number; expiresAtMs: number } | undefined {
    const agent = this.#agents.get(agentId);
    return agent === undefined ? undefined : { generation: agent.holder.generation, expiresAtMs: agent.holder.expiresAtMs };
  }

  /**
   * Shuts down gracefully: stops every agent (their AgentEvents flushed on the
   * stream), closes the stream, then the channel. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    const wasRefused = this.#state === 'refused';
    this.#state = 'closed';
    await this.#stopAllAgents('host shutting down');
    // Hand the agents' last events and acks to the stream before closing it.
    await this.#writer?.whenBelow(1);
    this.#closing.abort();
    if (!wasRefused) {
      this.#call?.end();
      this.#call?.cancel();
    }
    await this.done;
    await this.#expiry;
    this.#client.close();
    this.#channel.close();
  }

  async #run(): Promise<HostExit> {
    const { clock } = this.#options;
    const signal = this.#closing.signal;
    let attempt = 0;
    while (!signal.aborted) {
      const outcome = await this.#stream();
      if (signal.aborted) break;
      if (outcome.refusal !== undefined) {
        this.#state = 'refused';
        this.#logger.error({ refusal: outcome.refusal, details: outcome.details }, 'control plane refused this host for good');
        this.events.emit('refused', { refusal: outcome.refusal, details: outcome.details });
        await this.#stopAllAgents(`host refused: ${outcome.refusal}`);
        return { refusal: outcome.refusal, details: outcome.details };
      }
      this.#state = 'connecting';
      if (outcome.isWelcomed) attempt = 0;
      const delayMs = retry.createTimeout(attempt, {
        factor: 2,
        minTimeout: this.#options.reconnectMinDelayMs ?? 500,
        maxTimeout: this.#options.reconnectMaxDelayMs ?? 30_000,
        randomize: true,
      });
      attempt = Math.min(attempt + 1, 30);
      this.#logger.info({ code: outcome.code, details: outcome.details, delayMs }, 'stream lost; reconnecting');
      this.events.emit('disconnected', { code: outcome.code, details: outcome.details });
      await clock.sleep(delayMs, signal);
    }
    return {};
  }

  /** Runs one stream to its end. */
  async #stream(): Promise<StreamOutcome> {
    const metadata = new grpc.Metadata();
    const stored = await this.#options.credentialStore.load();
    if (stored !== undefined) metadata.set('authorization', `Bearer ${stored.token}`);
    else if (this.#options.joinToken !== undefined) metadata.set('authorization', `Join ${this.#options.joinToken}`);
    else return { isWelcomed: false, code: grpc.status.UNAUTHENTICATED, details: 'no host credential and no join token', refusal: 'unknown-host' };

    if (stored !== undefined) this.#hostCredentialExpiresAtMs = stored.expiresAtMs;
    const call = this.#client.connect(metadata);
    this.#call = call;
    const writer = new StreamWriter<HostMessage>(call);
    this.#writer = writer;
    const streamEnded = new AbortController();
    let isWelcomed = false;
    let chain = Promise.resolve();
    call.on('data', (message: ControlMessage) => {
      if (message.welcome !== undefined && !isWelcomed) {
        isWelcomed = true;
        this.#pingLoop(writer, streamEnded.signal).catch((err: unknown) => this.#logger.error({ err }, 'ping loop failed'));
      }
      chain = chain
        .then(() => this.#onMessage(writer, message))
        .catch((err: unknown) => this.#logger.error({ err }, 'failed to handle an envelope'));
    });
    this.#endsInHello = [...this.#unreportedEnds.values()];
    writer.write({
      hello: {
        protocolVersion: PROTOCOL_VERSION,
        version: HOST_VERSION,
        capacity: this.#options.capacity ?? 0,
        labels: [...(this.#options.labels ?? [])],
        allowedCommands: [...(this.#options.allowedCommands ?? [])],
        modules: [...(this.#options.modules?.keys() ?? [])],
        ended: [...this.#unreportedEnds.values()],
        running: [...this.#agents.values()].map((agent) => ({
          agentId: agent.agentId,
          incarnation: agent.incarnation,
          epoch: this.#epoch,
          lastSeq: agent.takenSeq,
          generation: agent.holder.generation,
        })),
      },
    });
    const outcome = await new Promise<StreamOutcome>((resolve) => {
      call.on('error', () => undefined);
      call.on('status', (status: grpc.StatusObject) => {
        const refusal = status.metadata.get(REFUSAL_METADATA_KEY)[0];
        resolve({
          isWelcomed,
          code: status.code,
          details: status.details,
          refusal: status.code !== grpc.status.OK && isRefusal(refusal) ? refusal : undefined,
        });
      });
    });
    streamEnded.abort();
    writer.close();
    if (this.#writer === writer) this.#writer = undefined;
    await chain;
    return outcome;
  }

  async #onMessage(writer: StreamWriter<HostMessage>, message: ControlMessage): Promise<void> {
    if (message.welcome !== undefined) await this.#onWelcome(writer, message.welcome);
    else if (message.startAgent !== undefined) await this.#onStartAgent(writer, message.startAgent);
    else if (message.tokenRotated !== undefined) await this.#onTokenRotated(writer, message.tokenRotated);
    else if (message.deliver !== undefined) this.#onDeliver(message.deliver);
    else if (message.skip !== undefined) this.#agents.get(message.skip.agentId)?.onDelivery({ type: 'skip', seq: message.skip.seq });
    else if (message.stopAgent !== undefined) await this.#onStopAgent(writer, message.stopAgent.agentId, message.stopAgent.reason);
    else if (message.ping !== undefined) writer.write({ pong: { pingTimeMs: message.ping.timeMs, timeMs: this.#options.clock.now() } });
    else if (message.pong !== undefined) {
      // Our clock minus the control plane's, assuming a symmetric round trip.
      const nowMs = this.#options.clock.now();
      this.#clockSkewMs = Math.round((message.pong.pingTimeMs + nowMs) / 2 - message.pong.timeMs);
    }
    else if (message.reject !== undefined) {
      const { what, agentId, reason } = message.reject;
      this.#logger.warn({ what, agentId, reason }, 'control plane rejected an envelope');
      this.events.emit('reject', { what, agentId, reason });
    }
  }

  async #onWelcome(writer: StreamWriter<HostMessage>, welcome: Welcome): Promise<void> {
    for (const reported of this.#endsInHello) {
      if (this.#unreportedEnds.get(reported.agentId) === reported) this.#unreportedEnds.delete(reported.agentId);
    }
    this.#endsInHello = [];
    this.#hostId = welcome.hostId;
    this.#epoch = welcome.epoch;
    if (welcome.heartbeatIntervalMs > 0) this.#heartbeatIntervalMs = welcome.heartbeatIntervalMs;
    if ((welcome.rotation?.agentTokenTtlMs ?? 0) > 0) this.#agentTokenTtlMs = welcome.rotation?.agentTokenTtlMs ?? this.#agentTokenTtlMs;
    if (welcome.hostCredential !== undefined) await this.#storeHostCredential(writer, welcome.hostCredential);
    this.#state = 'connected';
    this.#logger.info({ hostId: welcome.hostId, sessionId: welcome.sessionId, epoch: welcome.epoch }, 'connected to control plane');
    this.events.emit('connected', { hostId: welcome.hostId, sessionId: welcome.sessionId, epoch: welcome.epoch });
  }

  /** App-level pings on an open stream: data through proxies, and the clock skew. */
  async #pingLoop(writer: StreamWriter<HostMessage>, signal: AbortSignal): Promise<void> {
    const { clock } = this.#options;
    const intervalMs = this.#options.pingIntervalMs ?? 30_000;
    while (!signal.aborted) {
      writer.write({ ping: { timeMs: clock.now() } });
      await clock.sleep(intervalMs, signal);
    }
  }

  /** Checks, connected or not, how long the tokens held here have left. */
  async #expiryLoop(): Promise<void> {
    const { clock } = this.#options;
    const signal = this.#closing.signal;
    while (!signal.aborted) {
      await clock.sleep(this.#options.pingIntervalMs ?? 30_000, signal);
      if (!signal.aborted) this.#checkExpiry();
    }
  }

  /** The lowest time-to-expiry over every held token (agents' and the host's own). */
  lowestTimeToExpiryMs(): number {
    const nowMs = this.#options.clock.now();
    let lowest = this.#hostCredentialExpiresAtMs === 0 ? Infinity : this.#hostCredentialExpiresAtMs - nowMs;
    for (const agent of this.#agents.values()) lowest = Math.min(lowest, agent.holder.expiresAtMs - nowMs);
    return lowest;
  }

  /** Host clock minus control-plane clock, from the last Ping/Pong. */
  get clockSkewMs(): number {
    return this.#clockSkewMs;
  }

  #checkExpiry(): void {
    const lowestMs = this.lowestTimeToExpiryMs();
    const thresholdMs = this.#agentTokenTtlMs * (this.#options.expiryWarningFraction ?? 0.25);
    if (lowestMs < thresholdMs) {
      if (!this.#isExpiryWarned) {
        this.#logger.warn({ lowestTimeToExpiryMs: lowestMs, thresholdMs }, 'a token is close to expiry: is the control plane reachable?');
        this.events.emit('expiry-warning', { lowestTimeToExpiryMs: lowestMs });
      }
      this.#isExpiryWarned = true;
    } else {
      this.#isExpiryWarned = false;
    }
  }

  async #storeHostCredential(writer: StreamWriter<HostMessage>, credential: Credential): Promise<void> {
    await this.#options.credentialStore.save(credential);
    this.#hostCredentialExpiresAtMs = credential.expiresAtMs;
    writer.write({ ack: { agentId: '', generation: credential.generation, ok: true, error: '', incarnation: 0 } });
    this.#logger.info({ gen: credential.generation, jti: credential.tokenId, kid: credential.keyId, exp: credential.expiresAtMs }, 'host credential stored');
    this.events.emit('host-credential', { generation: credential.generation, expiresAtMs: credential.expiresAtMs });
  }

  async #onStartAgent(writer: StreamWriter<HostMessage>, start: StartAgent): Promise<void> {
    const existing = this.#agents.get(start.agentId);
    if (existing !== undefined) {
      if (existing.incarnation === start.incarnation) return;
      await this.#stopAgent(existing, 'superseded by a newer incarnation');
    }
    try {
      const agent = await HostedAgent.start({
        start,
        epoch: this.#epoch,
        runner: this.#runnerFor(start),
        clock: this.#options.clock,
        logger: this.#options.logger,
        channel: this.#channel,
        target: this.#options.target,
        heartbeatIntervalMs: () => this.#heartbeatIntervalMs,
        onHeartbeat: (result) => this.events.emit('heartbeat', { agentId: start.agentId, ...result }),
        send: (envelope) => this.#writer?.write(envelope),
        onTaken: (seq) => this.events.emit('message-taken', { agentId: start.agentId, seq }),
      });
      if (this.#state === 'closed' || this.#state === 'refused') {
        await agent.stop();
        return;
      }
      this.#agents.set(start.agentId, agent);
      agent.ended
        .then((end) => this.#onAgentEnded(agent, end))
        .catch((err: unknown) => this.#logger.error({ err, agentId: start.agentId }, "failed to handle an agent's end"));
      writer.write({ agentEvent: { agentId: start.agentId, state: 'started', detail: '', incarnation: start.incarnation } });
      this.#logger.info({ agentId: start.agentId, incarnation: start.incarnation, gen: agent.holder.generation }, 'agent started');
      this.events.emit('agent-started', { agentId: start.agentId, incarnation: start.incarnation, credentials: agent.holder.readOnly() });
    } catch (err) {
      this.#logger.error({ err, agentId: start.agentId }, 'agent failed to start');
      writer.write({ agentEvent: { agentId: start.agentId, state: 'failed', detail: err instanceof Error ? err.message : 'failed to start', incarnation: start.incarnation } });
    }
  }

  /** What runs `start`'s agent: a registered module, or an allowed command (checked here too, whatever the control plane sent). */
  #runnerFor(start: StartAgent): AgentRunnerFactory {
    const spec = start.spec;
    if (spec?.kind === 'module') {
      const module = this.#options.modules?.get(spec.module);
      if (module === undefined) throw new FailedPreconditionError(`module ${spec.module} is not registered on this host`);
      return moduleRunner(module);
    }
    if (spec?.kind === 'process') {
      const allowedCommands = this.#options.allowedCommands ?? [];
      if (!allowedCommands.includes(spec.command) || this.#options.agentsDir === undefined) {
        throw new FailedPreconditionError(`command ${spec.command} is not allowed on this host`);
      }
      return processRunner({
        allowedCommands,
        agentsDir: this.#options.agentsDir,
        server: this.#options.target,
        ...(this.#options.caFile === undefined ? {} : { caFile: this.#options.caFile }),
        stopGraceMs: this.#options.stopGraceMs ?? 10_000,
        environment: process.env,
      });
    }
    throw new FailedPreconditionError(`cannot run an agent of kind ${spec?.kind ?? 'missing'}`);
  }

  /** An agent ended by itself (a process exited): tell the control plane; nothing of it stays here. */
  async #onAgentEnded(agent: HostedAgent, end: AgentEnd): Promise<void> {
    // Stopped by us meanwhile (StopAgent, supersession, shutdown): that path reports it.
    if (this.#agents.get(agent.agentId) !== agent) return;
    this.#agents.delete(agent.agentId);
    await agent.stop();
    const event = { agentId: agent.agentId, state: end.state, detail: end.detail, incarnation: agent.incarnation };
    // Kept for the next Hello until a Welcome confirms the control plane has it: the stream may be down now.
    this.#unreportedEnds.set(agent.agentId, event);
    this.#writer?.write({ agentEvent: event });
    this.#logger.info({ agentId: agent.agentId, state: end.state, detail: end.detail }, 'agent ended');
    this.events.emit('agent-ended', { agentId: agent.agentId, state: end.state, detail: end.detail });
  }

  #onDeliver(deliver: Deliver): void {
    const agent = this.#agents.get(deliver.agentId);
    const message = deliver.message;
    if (agent === undefined || message === undefined) return;
    agent.onDelivery({
      type: 'deliver',
      seq: deliver.seq,
      message: {
        seq: deliver.seq,
        id: message.id,
        from: message.from,
        contentType: message.contentType,
        payload: message.payload,
        createdAtMs: message.createdAtMs,
      },
    });
  }

  async #onTokenRotated(writer: StreamWriter<HostMessage>, rotated: TokenRotated): Promise<void> {
    const credential = rotated.credential;
    if (credential === undefined) return;
    if (rotated.agentId === '') {
      await this.#storeHostCredential(writer, credential);
      return;
    }
    const agent = this.#agents.get(rotated.agentId);
    if (agent === undefined) return;
    let result: ApplyResult;
    try {
      result = await agent.applyCredential(credential, this.#epoch);
    } catch (err) {
      // In the holder (heartbeats use it) but not where the agent reads it (its token file).
      this.#logger.error({ err, agentId: rotated.agentId, gen: credential.generation, jti: credential.tokenId }, 'rotated credential not passed on to the agent');
      writer.write({ ack: { agentId: rotated.agentId, generation: credential.generation, ok: false, error: 'credential not passed on to the agent', incarnation: agent.incarnation } });
      return;
    }
    writer.write({
      ack: { agentId: rotated.agentId, generation: credential.generation, ok: result !== 'revoked', error: result === 'revoked' ? 'agent stopped' : '', incarnation: agent.incarnation },
    });
    if (result === 'applied') {
      this.#logger.debug({ agentId: rotated.agentId, gen: credential.generation, jti: credential.tokenId, kid: credential.keyId, exp: credential.expiresAtMs }, 'credential rotated');
      this.events.emit('rotation-applied', { agentId: rotated.agentId, generation: credential.generation });
    }
  }

  async #onStopAgent(writer: StreamWriter<HostMessage>, agentId: string, reason: string): Promise<void> {
    const agent = this.#agents.get(agentId);
    if (agent === undefined) return;
    await this.#stopAgent(agent, reason);
    writer.write({ agentEvent: { agentId, state: 'stopped', detail: reason, incarnation: agent.incarnation } });
  }

  async #stopAgent(agent: HostedAgent, reason: string): Promise<void> {
    if (this.#agents.get(agent.agentId) === agent) this.#agents.delete(agent.agentId);
    await agent.stop();
    this.#logger.info({ agentId: agent.agentId, reason }, 'agent stopped');
    this.events.emit('agent-stopped', { agentId: agent.agentId, reason });
  }

  async #stopAllAgents(reason: string): Promise<void> {
    const agents = [...this.#agents.values()];
    await Promise.all(
      agents.map(async (agent) => {
        await this.#stopAgent(agent, reason);
        this.#writer?.write({ agentEvent: { agentId: agent.agentId, state: 'stopped', detail: reason, incarnation: agent.incarnation } });
      }),
    );
  }
}
