import * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import { FailedPreconditionError, InvalidArgumentError, InvalidSecretError } from '../common/errors.js';
import { FailoverChannel } from '../common/failover-channel.js';
import type { Logger } from '../common/logger.js';
import { HOST_MAX_RECEIVE_MESSAGE_BYTES, PROTOCOL_VERSION, type Refusal } from '../common/protocol.js';
import { tokenProblem } from '../common/secrets.js';
import { parseServerAddresses } from '../common/server-addresses.js';
import { StreamWriter } from '../common/stream-writer.js';
import type { Credential, Label } from '../gen/tether/v1/common.js';
import {
  HostServiceClient,
  type AgentEvent,
  type ControlMessage,
  type Deliver,
  type HostMessage,
  type StartAgent,
  type RotationPolicy,
  type TokenRotated,
  type Welcome,
} from '../gen/tether/v1/host.js';
import { AckBatchingWriter } from './ack-batching-writer.js';
import type { AgentEnd, AgentRunnerFactory } from './agent-runner.js';
import { runConnectionLoop, streamOutcomeOf, type StreamOutcome } from './connection-loop.js';
import type { ApplyResult } from './credential-holder.js';
import { AgentHostEvents } from './events.js';
import { hostCadence } from './host-cadence.js';
import type { HostCredentialStore } from './host-credential-store.js';
import { EnvelopeRouter } from './envelope-router.js';
import { DEFAULT_STOP_DEADLINE_MS, HostedAgent, type StopOutcome } from './hosted-agent.js';
import { moduleRunner } from './module-runner.js';
import { processRunner } from './process-agent.js';
import { DEFAULT_RECONNECT_BACKOFF, type ReconnectBackoffPolicy } from './reconnect-backoff.js';
import type { AgentModule } from './tools/agent-module.js';
import { assertPlaintextAllowed } from './tools/loopback.js';

/** The control plane's defaults, assumed until its Welcome says otherwise. */
const DEFAULT_ROTATION_POLICY: RotationPolicy = {
  agentTokenTtlMs: 3_600_000,
  hostTokenTtlMs: 72 * 3_600_000,
  clockToleranceMs: 30_000,
  rotationWindowStart: 0.5,
  rotationWindowWidth: 0.1,
};

/** `announced` over `current`, field by field; a field not set (0, from an older control plane) keeps what `current` had. */
function mergeRotationPolicy(current: RotationPolicy, announced: RotationPolicy): RotationPolicy {
  const pick = (value: number, fallback: number): number => (value > 0 ? value : fallback);
  return {
    agentTokenTtlMs: pick(announced.agentTokenTtlMs, current.agentTokenTtlMs),
    hostTokenTtlMs: pick(announced.hostTokenTtlMs, current.hostTokenTtlMs),
    clockToleranceMs: pick(announced.clockToleranceMs, current.clockToleranceMs),
    rotationWindowStart: pick(announced.rotationWindowStart, current.rotationWindowStart),
    rotationWindowWidth: pick(announced.rotationWindowWidth, current.rotationWindowWidth),
  };
}

/** The longest grpc-js may wait between connection attempts of the agents' channel. */
const AGENT_CHANNEL_MAX_BACKOFF_MS = 5_000;

/** The queue of the host's own credential (agents' queues are {@link agentQueue}). */
const HOST_QUEUE = 'host';

/** The queue of one agent's envelopes. */
function agentQueue(agentId: string): string {
  return `agent:${agentId}`;
}

/**
 * The detail of a `stopped` AgentEvent: the reason, or `abandoned` when the agent did not let go by
 * the deadline (still `stopped`, never `failed`: no restart policy brings back what was stopped).
 */
function stoppedDetail(outcome: StopOutcome, reason: string): string {
  return outcome === 'abandoned' ? 'abandoned' : reason;
}

/** The host software's version, sent in Hello. */
export const HOST_VERSION = '0.1.0';

/** Options of {@link AgentHost}. */
export interface AgentHostOptions {
  /**
   * The control plane, `host:port`, or several comma-separated
   * (`a:7443,b:7443`): tried in a shuffled order, the next at once when one
   * fails (see {@link runConnectionLoop}). An empty or malformed entry fails
   * `start` with InvalidArgumentError.
   */
  target: string;
  clock: Clock;
  logger: Logger;
  /** Where the host keeps its own credential. */
  credentialStore: HostCredentialStore;
  /** `ID.SECRET`, used only while the store holds no credential. A malformed one fails `start` with InvalidSecretError. */
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
  /**
   * How long stopping an agent may take (on `clock`) before the host abandons it: holder revoked,
   * token file deleted, a process agent's process group killed, a module agent fenced off (its
   * signal aborted, whatever it still reports ignored). Reported `stopped` with detail `abandoned`. Default 30 s.
   */
  stopDeadlineMs?: number;
  /**
   * A process agent whose liveness probe (`{"ping":N}` on its stdin, answered `{"pong":N}`) goes
   * unanswered this long is reported `stalled` (a signal, not a kill). 0 or absent: not probed
   * (the `agent-host` binary's `--stall-after` defaults to 30 s).
   */
  stallAfterMs?: number;
  /**
   * An agent holding one message this long (from its handler's start) is reported `stalled`.
   * 0 or absent: no deadline (the binary's `--handler-deadline` defaults to 15 min).
   */
  handlerDeadlineMs?: number;
  /** A CA certificate file process agents are told of (`TETHER_CA_FILE`) to verify a TLS control plane. */
  caFile?: string;
  /** Agents this host will run; 0 for no limit. */
  capacity?: number;
  labels?: readonly Label[];
  /**
   * Reconnect backoff: full jitter, its cap 0.5 s doubling to 30 s and at most
   * a tenth of the lowest remaining token life (never below 250 ms).
   */
  reconnectMinDelayMs?: number;
  reconnectMaxDelayMs?: number;
  /** Uniform on [0, 1): the reconnect jitter. Default `Math.random`; tests seed it. */
  random?: () => number;
  /**
   * @internal Makes the host's channels (default `new grpc.Channel`), so a test can count and
   * inspect them: `stream` for each connection attempt (closed when its attempt ends), `agents`
   * once, for the agents' calls (closed by `close()`).
   */
  channelFactory?: (target: string, credentials: grpc.ChannelCredentials, options: grpc.ChannelOptions, purpose: 'stream' | 'agents') => grpc.Channel;
  /** App-level Ping towards the control plane. Default 30 s, and at most a quarter of the self-fence deadline. (The expiry check runs every TTL/10, at most 30 s.) */
  pingIntervalMs?: number;
  /**
   * Fence this host (stop every agent, delete their token files) after no contact with the
   * control plane for its lost-host grace minus a margin. Default true. Tests on a fake clock
   * that jumps past the grace in one step without a lost host in mind turn it off.
   */
  isSelfFenceEnabled?: boolean;
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
 * - `refused`: the control plane refused this host for good, or its own credential is unusable
 *   (malformed, see `HostExit.fault`); it does no more.
 * - `closed`: `close()` was called; agents stopped, stream and channel closed.
 */
export type AgentHostState = 'connecting' | 'connected' | 'refused' | 'closed';

/** How the host's connection loop ended. */
export interface HostExit {
  refusal?: Refusal;
  details?: string;
  /** The host's own credential was unusable (malformed): what is wrong with it, never the value. */
  fault?: string;
}

/**
 * How long without contact a host waits before it fences itself: the
 * control plane's lost-host grace minus a margin of the clock tolerance (at
 * most a tenth of the grace). At the smallest grace (a third of the agent TTL plus
 * the tolerance) that is a third of the TTL: a partition the promise covers
 * never stops an agent.
 */
export function selfFenceAfterMs(lostHostGraceMs: number, clockToleranceMs: number): number {
  return lostHostGraceMs - Math.min(Math.max(0, clockToleranceMs), lostHostGraceMs / 10);
}

/**
 * How long a host whose stream still looks connected waits for an answer to
 * the ping it sends at its self-fence deadline before it fences: half the
 * margin that deadline leaves before the control plane's grace ends (never
 * below 1 ms), so a quiet but living stream is not mistaken for a cut one and
 * a cut one is still fenced before the grace is over.
 */
export function selfFenceProbeMs(lostHostGraceMs: number, clockToleranceMs: number): number {
  return Math.max(1, Math.floor((lostHostGraceMs - selfFenceAfterMs(lostHostGraceMs, clockToleranceMs)) / 2));
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
  /**
   * The agents' channel (heartbeats, tools): one channel per address, calls sent to the one the
   * stream was last welcomed on; the stream has a channel of its own per attempt.
   */
  readonly #channel: FailoverChannel;
  /** The control plane's addresses, checked. */
  readonly #addresses: readonly string[];
  readonly #streamChannelOptions: grpc.ChannelOptions;
  readonly #channelFactory: NonNullable<AgentHostOptions['channelFactory']>;
  readonly #backoff: ReconnectBackoffPolicy;
  readonly #agents = new Map<string, HostedAgent>();
  /** One queue per agent and one for the host's own credential; Welcome is a barrier across them. */
  readonly #router: EnvelopeRouter;
  readonly #closing = new AbortController();
  /**
   * Aborted when a Welcome changes the cadence, so the expiry check does not sleep out a wait
   * planned for another TTL, and by `close()`.
   */
  #expiryReplan = new AbortController();
  /** Aborted when the self-fence deadline may have moved (a Welcome, or close). */
  #fenceReplan = new AbortController();
  /** The control plane's lost-host grace, from its last Welcome (0: not said; never fence). */
  #lostHostGraceMs = 0;
  /** When anything last arrived from the control plane (on the host's clock). */
  #lastContactMs = 0;
  readonly #fence: Promise<void>;
  #state: AgentHostState = 'connecting';
  #hostId = '';
  #epoch = '';
  #heartbeatIntervalMs = 30_000;
  #writer: AckBatchingWriter | undefined;
  #call: grpc.ClientDuplexStream<HostMessage, ControlMessage> | undefined;
  /** What the control plane said in Welcome; until then, its defaults. */
  #rotationPolicy: RotationPolicy = { ...DEFAULT_ROTATION_POLICY };
  #hostCredentialExpiresAtMs = 0;
  #clockSkewMs = 0;
  #isExpiryWarned = false;
  /** Agents that ended by themselves, until a Welcome follows the Hello that reported them. */
  readonly #unreportedEnds = new Map<string, AgentEvent>();
  /** The ends reported in the Hello of the current stream. */
  #endsInHello: AgentEvent[] = [];
  /** What the control plane said of agents it cannot hand over while this host drains (DrainUpdate), by agent. */
  readonly #drainUpdates = new Map<string, { outcome: string; reason: string }>();
  readonly #expiry: Promise<void>;

  private constructor(options: AgentHostOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'agent-host' });
    this.#router = new EnvelopeRouter((err, key) => this.#logger.error({ err, queue: key ?? 'welcome' }, 'failed to handle an envelope'));
    this.#addresses = parseServerAddresses(options.target);
    if (options.channelCredentials === undefined) assertPlaintextAllowed(options.target);
    if (options.joinToken !== undefined) {
      const problem = tokenProblem(options.joinToken) ?? (/^[^.]+\.[^.]+$/.test(options.joinToken) ? undefined : 'is not of the form ID.SECRET');
      if (problem !== undefined) throw new InvalidSecretError(`the join token ${problem}`);
    }
    if ((options.allowedCommands?.length ?? 0) > 0 && options.agentsDir === undefined) {
      throw new InvalidArgumentError('process agents need a directory: set agentsDir along with allowedCommands');
    }
    const keepaliveTimeMs = options.keepaliveTimeMs ?? 30_000;
    const channelOptions: grpc.ChannelOptions = {
      'grpc.keepalive_time_ms': keepaliveTimeMs,
      'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs ?? 10_000,
      'grpc.keepalive_permit_without_calls': 1,
      // The agents' channel lives as long as the host, so grpc-js's own backoff (1 s ×1.6 up to 120 s by
      // default) decides how soon their calls get through once the control plane is back: keep it short.
      // Tokens never wait for it (they come down the stream, whose channel is fresh per attempt).
      'grpc.initial_reconnect_backoff_ms': Math.min(options.reconnectMinDelayMs ?? 500, AGENT_CHANNEL_MAX_BACKOFF_MS),
      'grpc.max_reconnect_backoff_ms': Math.min(options.reconnectMaxDelayMs ?? 30_000, AGENT_CHANNEL_MAX_BACKOFF_MS),
      // The control plane caps payloads below this (net of the envelope); stated, not left to grpc-js's default.
      'grpc.max_receive_message_length': HOST_MAX_RECEIVE_MESSAGE_BYTES,
      ...options.channelOptions,
    };
    this.#channelFactory = options.channelFactory ?? ((target, credentials, channelOptions) => new grpc.Channel(target, credentials, channelOptions));
    const agentsCredentials = options.channelCredentials ?? grpc.credentials.createInsecure();
    const agentsChannelOptions: grpc.ChannelOptions =
      this.#addresses.length > 1 ? { ...channelOptions, 'grpc.use_local_subchannel_pool': 1 } : channelOptions;
    this.#channel = new FailoverChannel({
      addresses: this.#addresses,
      makeChannel: (address) => this.#channelFactory(address, agentsCredentials, agentsChannelOptions, 'agents'),
      random: options.random ?? Math.random,
    });
    this.#streamChannelOptions = {
      ...channelOptions,
      // A subchannel of its own: grpc-js's global pool would otherwise hand a fresh channel the old
      // channel's subchannel (same target, options and credentials), reconnect backoff and all.
      'grpc.use_local_subchannel_pool': 1,
    };
    this.#backoff = {
      ...DEFAULT_RECONNECT_BACKOFF,
      initialDelayMs: options.reconnectMinDelayMs ?? DEFAULT_RECONNECT_BACKOFF.initialDelayMs,
      maxDelayMs: options.reconnectMaxDelayMs ?? DEFAULT_RECONNECT_BACKOFF.maxDelayMs,
    };
    this.done = this.#run();
    this.#expiry = this.#expiryLoop();
    this.#fence = this.#fenceLoop();
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
   * Drains this host before it shuts down (SIGTERM): asks the control plane
   * to drain it (DrainRequest; the host is the stream's identity), then waits
   * until every agent has been handed over, or every one left is one the
   * control plane said it cannot hand over (DrainUpdate: blocked, or staying),
   * or `timeoutMs` has passed on the clock, or `signal` aborts (a second
   * signal). It does not wait for nothing: when the host is not connected it
   * asks nothing and returns at once, and when its stream is lost during the
   * wait it returns then; the agents left are the caller's to stop (`close()`).
   * Returns each agent not handed over, with why.
   */
  async drain(timeoutMs: number, signal?: AbortSignal): Promise<{ handedOver: number; notHandedOver: { agentId: string; reason: string }[] }> {
    const before = this.#agents.size;
    const writer = this.#writer;
    const left = (why: string): { agentId: string; reason: string }[] =>
      [...this.#agents.keys()].map((agentId) => {
        const update = this.#drainUpdates.get(agentId);
        return { agentId, reason: update === undefined ? why : `${update.outcome}: ${update.reason}` };
      });
    if (this.#state !== 'connected' || writer === undefined) {
      return { handedOver: 0, notHandedOver: left('the control plane is unreachable (not connected), so nothing could be handed over') };
    }
    if (before === 0) return { handedOver: 0, notHandedOver: [] };
    this.#drainUpdates.clear();
    writer.write({ drainRequest: {} });
    this.#logger.warn({ agents: before, timeoutMs }, 'draining: asked the control plane to hand every agent over');
    const done = new AbortController();
    let why = `not handed over within the drain timeout of ${timeoutMs} ms`;
    const check = (): void => {
      if ([...this.#agents.keys()].every((agentId) => this.#drainUpdates.has(agentId))) done.abort();
    };
    const onLost = (): void => {
      why = 'the stream to the control plane was lost during the drain';
      done.abort();
    };
    const onSignal = (): void => {
      why = 'the drain was cut short (a second signal)';
      done.abort();
    };
    this.events.on('agent-handed-over', check);
    this.events.on('agent-stopped', check);
    this.events.on('agent-ended', check);
    this.events.on('drain-update', check);
    this.events.on('disconnected', onLost);
    this.events.on('refused', onLost);
    signal?.addEventListener('abort', onSignal, { once: true });
    try {
      check();
      if (signal?.aborted === true) onSignal();
      await this.#options.clock.sleep(timeoutMs, done.signal);
    } finally {
      this.events.off('agent-handed-over', check);
      this.events.off('agent-stopped', check);
      this.events.off('agent-ended', check);
      this.events.off('drain-update', check);
      this.events.off('disconnected', onLost);
      this.events.off('refused', onLost);
      signal?.removeEventListener('abort', onSignal);
    }
    const notHandedOver = left(why);
    return { handedOver: before - notHandedOver.length, notHandedOver };
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
    this.#expiryReplan.abort();
    this.#fenceReplan.abort();
    if (!wasRefused) {
      this.#call?.end();
      this.#call?.cancel();
    }
    await this.done;
    await this.#expiry;
    await this.#fence;
    this.#channel.close();
  }

  async #run(): Promise<HostExit> {
    const credentials = this.#options.channelCredentials ?? grpc.credentials.createInsecure();
    const refused = await runConnectionLoop({
      clock: this.#options.clock,
      signal: this.#closing.signal,
      random: this.#options.random ?? Math.random,
      backoff: this.#backoff,
      addresses: this.#addresses,
      openChannel: (address) => this.#channelFactory(address, credentials, this.#streamChannelOptions, 'stream'),
      runStream: (channel, address) => this.#stream(channel, address),
      lowestTimeToExpiryMs: () => this.lowestTimeToExpiryMs(),
      onLost: (outcome, retryInMs, { attempt, capMs, retryAfterMs, address, nextAddress }) => {
        this.#state = 'connecting';
        this.#logger.info(
          { code: outcome.code, details: outcome.details, delayMs: retryInMs, attempt, capMs, retryAfterMs, server: address, nextServer: nextAddress },
          'stream lost; reconnecting',
        );
        this.events.emit('disconnected', { code: outcome.code, details: outcome.details, retryInMs, attempt, capMs, retryAfterMs });
      },
    });
    if (refused?.fault !== undefined) {
      this.#state = 'refused';
      this.#logger.error({ err: refused.fault }, 'the host credential is unusable; stopping');
      await this.#stopAllAgents('host credential unusable');
      return { fault: refused.fault.message };
    }
    if (refused?.refusal === undefined) return {};
    this.#state = 'refused';
    this.#logger.error({ refusal: refused.refusal, details: refused.details }, 'control plane refused this host for good');
    this.events.emit('refused', { refusal: refused.refusal, details: refused.details });
    await this.#stopAllAgents(`host refused: ${refused.refusal}`);
    return { refusal: refused.refusal, details: refused.details };
  }

  /** Runs one stream to its end, on `channel` (this attempt's own, to `address`). */
  async #stream(channel: grpc.Channel, address: string): Promise<StreamOutcome> {
    const metadata = new grpc.Metadata();
    const stored = await this.#options.credentialStore.load();
    // Checked before grpc-js sees it: its own complaint about a header value quotes the whole value.
    const storedProblem = stored === undefined ? undefined : tokenProblem(stored.token);
    if (storedProblem !== undefined) throw new InvalidSecretError(`the stored host credential ${storedProblem}`);
    if (stored !== undefined) metadata.set('authorization', `Bearer ${stored.token}`);
    else if (this.#options.joinToken !== undefined) metadata.set('authorization', `Join ${this.#options.joinToken}`);
    else return { isWelcomed: false, code: grpc.status.UNAUTHENTICATED, details: 'no host credential and no join token', refusal: 'unknown-host' };

    if (stored !== undefined) this.#hostCredentialExpiresAtMs = stored.expiresAtMs;
    const client = new HostServiceClient(address, this.#options.channelCredentials ?? grpc.credentials.createInsecure(), {
      channelOverride: channel,
    });
    const call = client.connect(metadata);
    this.#call = call;
    const writer = new AckBatchingWriter(new StreamWriter<HostMessage>(call));
    this.#writer = writer;
    const streamEnded = new AbortController();
    let isWelcomed = false;
    call.on('data', (message: ControlMessage) => {
      this.#lastContactMs = this.#options.clock.now();
      if (message.welcome !== undefined && !isWelcomed) {
        isWelcomed = true;
        // The agents' calls follow the stream to the control plane that took this host.
        this.#channel.prefer(address);
        writer.acceptsAckBatch = message.welcome.acceptsAckBatch;
        this.#pingLoop(writer, streamEnded.signal).catch((err: unknown) => this.#logger.error({ err }, 'ping loop failed'));
      }
      this.#route(writer, message);
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
        acceptsDeliverBatch: true,
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
      call.on('status', (status: grpc.StatusObject) => resolve(streamOutcomeOf(status, isWelcomed)));
    });
    streamEnded.abort();
    writer.close();
    if (this.#writer === writer) this.#writer = undefined;
    // Every task is bounded (a stop by the stop deadline), so neither the reconnect nor close() waits on an agent for ever.
    await this.#router.idle();
    return outcome;
  }

  /**
   * Sends one envelope to its queue. Per agent, StartAgent, TokenRotated, Deliver, Skip and StopAgent
   * keep stream order, so a rotation is applied (holder, then token file) before a later Deliver is
   * handed to the delivery reducer; a Deliver only hands the message over and never waits for the
   * agent, so nothing queued behind it waits for a message in hand. Welcome waits for all queues.
   * Ping, Pong and Reject concern no agent and are answered at once.
   */
  #route(writer: AckBatchingWriter, message: ControlMessage): void {
    const router = this.#router;
    if (message.welcome !== undefined) {
      const welcome = message.welcome;
      router.barrier(() => this.#onWelcome(writer, welcome));
    } else if (message.startAgent !== undefined) {
      const start = message.startAgent;
      router.enqueue(agentQueue(start.agentId), () => this.#onStartAgent(writer, start));
    } else if (message.tokenRotated !== undefined) {
      const rotated = message.tokenRotated;
      router.enqueue(rotated.agentId === '' ? HOST_QUEUE : agentQueue(rotated.agentId), () => this.#onTokenRotated(writer, rotated));
    } else if (message.deliver !== undefined) {
      const deliver = message.deliver;
      router.enqueue(agentQueue(deliver.agentId), () => this.#onDeliver(deliver));
    } else if (message.deliverBatch !== undefined) {
      // One task per run of deliveries to one agent, queued as its Delivers would be, in order.
      const deliveries = message.deliverBatch.deliveries;
      for (let start = 0; start < deliveries.length; ) {
        const agentId = (deliveries[start] as Deliver).agentId;
        let end = start + 1;
        while (end < deliveries.length && (deliveries[end] as Deliver).agentId === agentId) end++;
        const run = deliveries.slice(start, end);
        router.enqueue(agentQueue(agentId), () => {
          for (const deliver of run) this.#onDeliver(deliver);
        });
        start = end;
      }
    } else if (message.skip !== undefined) {
      const { agentId, seq } = message.skip;
      router.enqueue(agentQueue(agentId), () => this.#agents.get(agentId)?.onDelivery({ type: 'skip', seq }));
    } else if (message.stopAgent !== undefined) {
      const { agentId, reason, handOver } = message.stopAgent;
      if (handOver === true) {
        // In the agent's queue, after a StartAgent still under way; but the hand-over waits for the message in
        // hand, so it goes on outside the queue and nothing queued behind it waits.
        router.enqueue(agentQueue(agentId), () => {
          this.#onHandOver(agentId, reason).catch((err: unknown) => this.#logger.error({ err, agentId }, 'hand-over failed'));
        });
      } else router.enqueue(agentQueue(agentId), () => this.#onStopAgent(writer, agentId, reason));
    } else this.#onImmediate(writer, message);
  }

  /** The envelopes that concern no agent, answered as they come. */
  #onImmediate(writer: AckBatchingWriter, message: ControlMessage): void {
    if (message.ping !== undefined) writer.write({ pong: { pingTimeMs: message.ping.timeMs, timeMs: this.#options.clock.now() } });
    else if (message.pong !== undefined) {
      // Our clock minus the control plane's, assuming a symmetric round trip.
      const nowMs = this.#options.clock.now();
      this.#clockSkewMs = Math.round((message.pong.pingTimeMs + nowMs) / 2 - message.pong.timeMs);
    }
    else if (message.drainUpdate !== undefined) {
      const { agentId, outcome, reason } = message.drainUpdate;
      this.#logger.warn({ agentId, outcome, reason }, outcome === 'stays' ? 'drain: agent not moved by a drain' : 'drain: agent cannot be handed over now');
      this.#drainUpdates.set(agentId, { outcome, reason });
      this.events.emit('drain-update', { agentId, outcome, reason });
    }
    else if (message.reject !== undefined) {
      const { what, agentId, reason } = message.reject;
      this.#logger.warn({ what, agentId, reason }, 'control plane rejected an envelope');
      this.events.emit('reject', { what, agentId, reason });
    }
  }

  async #onWelcome(writer: AckBatchingWriter, welcome: Welcome): Promise<void> {
    for (const reported of this.#endsInHello) {
      if (this.#unreportedEnds.get(reported.agentId) === reported) this.#unreportedEnds.delete(reported.agentId);
    }
    this.#endsInHello = [];
    this.#hostId = welcome.hostId;
    this.#epoch = welcome.epoch;
    if (welcome.heartbeatIntervalMs > 0) this.#heartbeatIntervalMs = welcome.heartbeatIntervalMs;
    const cadenceBefore = this.#cadence().expiryCheckIntervalMs;
    if (welcome.rotation !== undefined) this.#rotationPolicy = mergeRotationPolicy(this.#rotationPolicy, welcome.rotation);
    if (this.#cadence().expiryCheckIntervalMs !== cadenceBefore) {
      this.#expiryReplan.abort();
      this.#expiryReplan = new AbortController();
    }
    if (welcome.hostCredential !== undefined) await this.#storeHostCredential(writer, welcome.hostCredential);
    if (welcome.lostHostGraceMs !== this.#lostHostGraceMs) {
      this.#lostHostGraceMs = welcome.lostHostGraceMs;
      this.#fenceReplan.abort();
      this.#fenceReplan = new AbortController();
    }
    this.#state = 'connected';
    this.#logger.info({ hostId: welcome.hostId, sessionId: welcome.sessionId, epoch: welcome.epoch, rotation: this.#rotationPolicy }, 'connected to control plane');
    this.events.emit('connected', { hostId: welcome.hostId, sessionId: welcome.sessionId, epoch: welcome.epoch });
  }

  /** App-level pings on an open stream: data through proxies, and the clock skew. */
  async #pingLoop(writer: AckBatchingWriter, signal: AbortSignal): Promise<void> {
    const { clock } = this.#options;
    while (!signal.aborted) {
      writer.write({ ping: { timeMs: clock.now() } });
      // Woken early when the grace changes (a Welcome), so the new interval applies at once.
      const wake = new AbortController();
      const onWake = (): void => wake.abort();
      const replan = this.#fenceReplan.signal;
      signal.addEventListener('abort', onWake, { once: true });
      replan.addEventListener('abort', onWake, { once: true });
      try {
        await clock.sleep(this.#pingIntervalMs(), wake.signal);
      } finally {
        signal.removeEventListener('abort', onWake);
        replan.removeEventListener('abort', onWake);
      }
    }
  }

  /**
   * How often the host pings the control plane over its stream: the configured
   * interval (30 s), and at most a quarter of the self-fence deadline once the
   * control plane has said its grace, so a quiet but living stream answers
   * often enough never to look cut off.
   */
  #pingIntervalMs(): number {
    const configuredMs = this.#options.pingIntervalMs ?? 30_000;
    if (this.#lostHostGraceMs <= 0) return configuredMs;
    return Math.max(1, Math.min(configuredMs, Math.floor(selfFenceAfterMs(this.#lostHostGraceMs, this.#rotationPolicy.clockToleranceMs) / 4)));
  }

  /** Checks, connected or not, how long the tokens held here have left: every TTL/10, at most 30 s. */
  async #expiryLoop(): Promise<void> {
    const { clock } = this.#options;
    const signal = this.#closing.signal;
    let lastCheckAtMs = clock.now();
    while (!signal.aborted) {
      const replan = this.#expiryReplan.signal;
      // Measured from the last check, so a new cadence (a Welcome) applies to the wait already under way.
      const dueAtMs = lastCheckAtMs + this.#cadence().expiryCheckIntervalMs;
      if (clock.now() < dueAtMs) {
        await clock.sleep(dueAtMs - clock.now(), replan);
        if (signal.aborted) return;
        if (replan.aborted) continue;
      }
      this.#checkExpiry();
      lastCheckAtMs = clock.now();
    }
  }

  /**
   * Self-fencing: once nothing has come from the control plane for its
   * lost-host grace minus a margin, every agent here is stopped and its token
   * file deleted, before the control plane can declare this host lost and
   * start the agents elsewhere. A partitioned but living host so never runs a
   * copy that could still act. Nothing is reported for them: the control plane
   * did not ask for the stop, and starts them again here if this host is back
   * before the grace is over.
   */
  async #fenceLoop(): Promise<void> {
    const { clock } = this.#options;
    const closing = this.#closing.signal;
    if (this.#options.isSelfFenceEnabled === false) return;
    while (!closing.aborted) {
      const replan = this.#fenceReplan.signal;
      const graceMs = this.#lostHostGraceMs;
      if (graceMs <= 0) {
        await new Promise<void>((resolve) => (replan.aborted ? resolve() : replan.addEventListener('abort', () => resolve(), { once: true })));
        continue;
      }
      const fenceAfterMs = selfFenceAfterMs(graceMs, this.#rotationPolicy.clockToleranceMs);
      const silentForMs = clock.now() - this.#lastContactMs;
      if (silentForMs < fenceAfterMs || this.#agents.size === 0) {
        // Contact may come meanwhile: the deadline is recomputed from the last contact when this wakes.
        await clock.sleep(silentForMs < fenceAfterMs ? fenceAfterMs - silentForMs : fenceAfterMs, replan);
        continue;
      }
      // A stream that still looks up may only have been quiet (nothing to say, or a clock that moved in
      // one jump): ask it once, and fence only if nothing came back within the probe window, which
      // fits in the margin before the control plane's grace ends.
      const writer = this.#writer;
      if (this.#state === 'connected' && writer !== undefined) {
        const contactBefore = this.#lastContactMs;
        writer.write({ ping: { timeMs: clock.now() } });
        await clock.sleep(selfFenceProbeMs(graceMs, this.#rotationPolicy.clockToleranceMs), replan);
        if (closing.aborted) return;
        if (replan.aborted || this.#lastContactMs !== contactBefore) continue;
      }
      const agentIds = [...this.#agents.keys()];
      this.#logger.error(
        { silentForMs, lostHostGraceMs: graceMs, fenceAfterMs, agents: agentIds.length },
        'no contact with the control plane for its lost-host grace minus a margin: fencing this host (stopping every agent, deleting their token files)',
      );
      await Promise.all([...this.#agents.values()].map((agent) => this.#stopAgent(agent, 'host fenced itself: no contact with the control plane')));
      this.events.emit('self-fenced', { agentIds, silentForMs });
    }
  }

  /** The cadences tied to the TTL the control plane announced (read each time: a Welcome may change it). */
  #cadence(): ReturnType<typeof hostCadence> {
    return hostCadence(this.#rotationPolicy.agentTokenTtlMs, this.#heartbeatIntervalMs);
  }

  /** The rotation policy the control plane announced in its last Welcome (its defaults before any). */
  get rotationPolicy(): Readonly<RotationPolicy> {
    return this.#rotationPolicy;
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
    const thresholdMs = this.#rotationPolicy.agentTokenTtlMs * (this.#options.expiryWarningFraction ?? 0.25);
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

  async #storeHostCredential(writer: AckBatchingWriter, credential: Credential): Promise<void> {
    await this.#options.credentialStore.save(credential);
    this.#hostCredentialExpiresAtMs = credential.expiresAtMs;
    writer.write({ ack: { agentId: '', generation: credential.generation, ok: true, error: '', incarnation: 0 } });
    this.#logger.info({ gen: credential.generation, jti: credential.tokenId, kid: credential.keyId, exp: credential.expiresAtMs }, 'host credential stored');
    this.events.emit('host-credential', { generation: credential.generation, expiresAtMs: credential.expiresAtMs });
  }

  /** What every hosted agent of this host calls alike. */
  readonly #agentHooks = {
    heartbeatIntervalMs: (): number => this.#heartbeatIntervalMs,
    send: (envelope: HostMessage): void => {
      // A delivery Ack waits for the others of this turn (see AckBatchingWriter).
      if (envelope.ack?.seq !== undefined) this.#writer?.ack(envelope.ack);
      else this.#writer?.write(envelope);
    },
  };

  #emitHeartbeat(agentId: string, result: { isOk: boolean; error?: Error; generation: number }): void {
    this.events.emit('heartbeat', { agentId, ...result });
  }

  #emitTaken(agentId: string, seq: number): void {
    this.events.emit('message-taken', { agentId, seq });
  }

  #emitLiveness(agentId: string, incarnation: number, liveness: { isStalled: boolean; detail: string }): void {
    this.events.emit('agent-liveness', { agentId, incarnation, ...liveness });
  }

  async #onStartAgent(writer: AckBatchingWriter, start: StartAgent): Promise<void> {
    const existing = this.#agents.get(start.agentId);
    if (existing !== undefined) {
      if (existing.incarnation === start.incarnation) return;
      await this.#stopAgent(existing, 'superseded by a newer incarnation');
    }
    // The agent's own handler deadline, if its spec sets one (0: none); else the host's.
    const handlerDeadlineMs = start.spec?.handlerDeadlineMs ?? this.#options.handlerDeadlineMs;
    try {
      const agent = await HostedAgent.start({
        start,
        epoch: this.#epoch,
        runner: this.#runnerFor(start),
        clock: this.#options.clock,
        logger: this.#options.logger,
        channel: this.#channel,
        target: this.#options.target,
        // Each agent holds these for its life: shared functions and bound methods, not closures (per-agent memory, issue 16).
        heartbeatIntervalMs: this.#agentHooks.heartbeatIntervalMs,
        callDeadlineMs: this.#cadence().callDeadlineMs,
        onHeartbeat: this.#emitHeartbeat.bind(this, start.agentId),
        send: this.#agentHooks.send,
        onTaken: this.#emitTaken.bind(this, start.agentId),
        stopDeadlineMs: this.#stopDeadlineMs,
        ...(this.#options.stallAfterMs === undefined ? {} : { stallAfterMs: this.#options.stallAfterMs }),
        ...(handlerDeadlineMs === undefined ? {} : { handlerDeadlineMs }),
        onLiveness: this.#emitLiveness.bind(this, start.agentId, start.incarnation),
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

  async #onTokenRotated(writer: AckBatchingWriter, rotated: TokenRotated): Promise<void> {
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

  /**
   * Hands an agent over (a drain, see {@link HostedAgent.handOver}) and
   * reports it `stopped` with the seq taken, after its last Ack. The report is
   * also kept for the next Hello (`ended`) until a Welcome follows it, so a
   * stream lost meanwhile does not lose it: the control plane starts the agent
   * elsewhere only on this report.
   */
  async #onHandOver(agentId: string, reason: string): Promise<void> {
    const agent = this.#agents.get(agentId);
    if (agent === undefined) return;
    const { takenSeq, outcome, detail } = await agent.handOver();
    if (this.#agents.get(agentId) === agent) this.#agents.delete(agentId);
    const event: AgentEvent = {
      agentId,
      state: 'stopped',
      detail: outcome === 'abandoned' ? `${detail}; abandoned at the stop deadline` : detail,
      incarnation: agent.incarnation,
      takenSeq,
    };
    this.#unreportedEnds.set(agentId, event);
    this.#writer?.write({ agentEvent: event });
    this.#logger.info({ agentId, incarnation: agent.incarnation, takenSeq, reason, outcome }, 'agent handed over');
    this.events.emit('agent-stopped', { agentId, reason, outcome });
    this.events.emit('agent-handed-over', { agentId, incarnation: agent.incarnation, takenSeq, detail: event.detail });
  }

  async #onStopAgent(writer: AckBatchingWriter, agentId: string, reason: string): Promise<void> {
    const agent = this.#agents.get(agentId);
    if (agent === undefined) return;
    const outcome = await this.#stopAgent(agent, reason);
    writer.write({ agentEvent: { agentId, state: 'stopped', detail: stoppedDetail(outcome, reason), incarnation: agent.incarnation } });
  }

  /** Stops `agent`, within the stop deadline (past it the agent is abandoned). */
  async #stopAgent(agent: HostedAgent, reason: string): Promise<StopOutcome> {
    if (this.#agents.get(agent.agentId) === agent) this.#agents.delete(agent.agentId);
    const outcome = await agent.stop();
    if (outcome === 'abandoned') this.#logger.warn({ agentId: agent.agentId, reason, deadlineMs: this.#stopDeadlineMs }, 'agent abandoned at the stop deadline');
    else this.#logger.info({ agentId: agent.agentId, reason }, 'agent stopped');
    this.events.emit('agent-stopped', { agentId: agent.agentId, reason, outcome });
    return outcome;
  }

  async #stopAllAgents(reason: string): Promise<void> {
    const agents = [...this.#agents.values()];
    await Promise.all(
      agents.map(async (agent) => {
        const outcome = await this.#stopAgent(agent, reason);
        this.#writer?.write({ agentEvent: { agentId: agent.agentId, state: 'stopped', detail: stoppedDetail(outcome, reason), incarnation: agent.incarnation } });
      }),
    );
  }

  get #stopDeadlineMs(): number {
    return this.#options.stopDeadlineMs ?? DEFAULT_STOP_DEADLINE_MS;
  }
}
