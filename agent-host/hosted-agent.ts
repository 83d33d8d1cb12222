import type * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { Credential } from '../gen/tether/v1/common.js';
import type { HostMessage, StartAgent } from '../gen/tether/v1/host.js';
import { AgentStartTimeoutError, type AgentEnd, type AgentRunner, type AgentRunnerFactory } from './agent-runner.js';
import { initialDeliveryState, reduceDelivery, type DeliveryEffect, type DeliveryEvent, type DeliveryState } from './delivery/delivery-reducer.js';
import { CredentialHolder, type ApplyResult } from './credential-holder.js';
import { runHeartbeats } from './heartbeat.js';
import { AgentClient } from './tools/agent-client.js';
import type { DeliveredMessage } from './tools/agent-module.js';

/**
 * A hosted agent's lifecycle:
 * - `starting`: its runner (module instance or child process) is being started.
 * - `running`: heartbeating; takes messages.
 * - `stopped`: stopped by the control plane or the host, or ended by itself; its holder is revoked.
 */
export type HostedAgentState = 'starting' | 'running' | 'stopped';

/** Options of {@link HostedAgent.start}. */
export interface HostedAgentOptions {
  start: StartAgent;
  epoch: string;
  /** What runs the agent: `moduleRunner(module)` or `processRunner(...)`. */
  runner: AgentRunnerFactory;
  clock: Clock;
  logger: Logger;
  /** The host's channel to the control plane, shared by all its agents. */
  channel: grpc.ChannelInterface;
  target: string;
  heartbeatIntervalMs: () => number;
  /** The deadline of each of the agent's calls to the control plane (heartbeats, tools). Default 30 s. */
  callDeadlineMs?: number;
  onHeartbeat: (result: { isOk: boolean; generation: number; error?: Error }) => void;
  /** Sends an envelope on the host's current stream (dropped while it is down; delivery state makes up for it). */
  send: (message: HostMessage) => void;
  /** Called after each message the agent took. */
  onTaken?: (seq: number) => void;
  /** How long `stop()` waits for the agent before abandoning it (on `clock`). Default 30 s. */
  stopDeadlineMs?: number;
  /**
   * A process agent is `stalled` when a liveness probe has gone unanswered this
   * long (probes are sent every third of it); 0 or absent: not probed.
   */
  stallAfterMs?: number;
  /** An agent is `stalled` while it holds one message this long, counted from the handler's start; 0 or absent: no deadline. */
  handlerDeadlineMs?: number;
  /** Called when the agent becomes stalled or answers again (after the AgentEvent is sent). */
  onLiveness?: (liveness: { isStalled: boolean; detail: string }) => void;
}

/** How a stop ended: the agent let go in time, or it was abandoned at the deadline (see {@link HostedAgent.stop}). */
export type StopOutcome = 'stopped' | 'abandoned';

/** How a hand-over ended (see {@link HostedAgent.handOver}). */
export interface HandOverResult {
  /** Every seq up to this was taken (its Ack sent before this resolved). */
  takenSeq: number;
  outcome: StopOutcome;
  /** `handed over`, or what was left undone. */
  detail: string;
}

/** The default of {@link HostedAgentOptions.stopDeadlineMs}. */
export const DEFAULT_STOP_DEADLINE_MS = 30_000;

/**
 * `starting`, or a rejection once `deadlineMs` has passed on `clock` (a module whose
 * factory never settles must not hold its queue, the Welcome barrier or `close()`).
 * A runner that arrives after that is closed at once.
 */
async function startWithin(starting: Promise<AgentRunner>, clock: Clock, deadlineMs: number, logger: Logger): Promise<AgentRunner> {
  const settled = new AbortController();
  let runner: AgentRunner | undefined;
  let failure: { err: unknown } | undefined;
  starting.then(
    (started) => {
      runner = started;
      settled.abort();
    },
    (err: unknown) => {
      failure = { err };
      settled.abort();
    },
  );
  await clock.sleep(deadlineMs, settled.signal);
  if (failure !== undefined) throw failure.err;
  if (runner !== undefined) return runner;
  settled.abort();
  // Late: nobody will use it, so it is closed as soon as it exists.
  starting
    .then((late) => late.close())
    .catch((err: unknown) => logger.warn({ err }, 'agent that started after its deadline failed to close'));
  throw new AgentStartTimeoutError(`agent did not start within ${deadlineMs} ms`);
}

/**
 * One agent on this host: its own {@link CredentialHolder}, its heartbeat loop
 * and its runner, which takes the messages; every kind of runner goes through
 * the same delivery reducer. Owns all three and tears them down in `stop()`.
 */
export class HostedAgent {
  readonly agentId: string;
  readonly incarnation: number;
  readonly holder: CredentialHolder;
  #state: HostedAgentState = 'starting';
  readonly #abort = new AbortController();
  readonly #logger: Logger;
  #runner: AgentRunner | undefined;
  #heartbeats: Promise<void> | undefined;
  #probes: Promise<void> | undefined;
  #stopping: Promise<StopOutcome> | undefined;
  readonly #clock: Clock;
  readonly #stopDeadlineMs: number;
  #delivery: DeliveryState<DeliveredMessage>;
  #handling: Promise<void> = Promise.resolve();
  readonly #send: (message: HostMessage) => void;
  readonly #onTaken: ((seq: number) => void) | undefined;
  readonly #stallAfterMs: number;
  readonly #handlerDeadlineMs: number;
  readonly #onLiveness: HostedAgentOptions['onLiveness'];
  readonly #onHeartbeat: HostedAgentOptions['onHeartbeat'];
  /** Since when a probe has gone unanswered (the first probe sent after the last answer); undefined: answered. */
  #unansweredSinceMs: number | undefined;
  /** The message in hand and since when; undefined: none. */
  #inHand: { seq: number; sinceMs: number } | undefined;
  /** What was last reported to the control plane: stalled or not. */
  #isStalled = false;
  /** A hand-over began: nothing more is taken in (see {@link handOver}). */
  #handingOver: Promise<HandOverResult> | undefined;

  private constructor(options: HostedAgentOptions, holder: CredentialHolder, logger: Logger) {
    this.agentId = options.start.agentId;
    this.incarnation = options.start.incarnation;
    this.holder = holder;
    this.#logger = logger;
    this.#send = options.send;
    this.#onTaken = options.onTaken;
    this.#clock = options.clock;
    this.#stopDeadlineMs = options.stopDeadlineMs ?? DEFAULT_STOP_DEADLINE_MS;
    this.#delivery = initialDeliveryState(options.start.ackedSeq);
    this.#stallAfterMs = options.stallAfterMs ?? 0;
    this.#handlerDeadlineMs = options.handlerDeadlineMs ?? 0;
    this.#onLiveness = options.onLiveness;
    this.#onHeartbeat = options.onHeartbeat;
  }

  /** Applies the start credential, starts the runner and starts heartbeating. */
  static async start(options: HostedAgentOptions): Promise<HostedAgent> {
    const { start, clock } = options;
    const holder = new CredentialHolder(clock);
    if (start.credential !== undefined) holder.apply(start.credential, options.epoch);
    const logger = options.logger.child({ agentId: start.agentId });
    const agent = new HostedAgent(options, holder, logger);
    const client = new AgentClient({
      target: options.target,
      channel: options.channel,
      source: holder.readOnly(),
      ...(options.callDeadlineMs === undefined ? {} : { deadlineMs: options.callDeadlineMs }),
    });
    try {
      agent.#runner = await startWithin(
        options.runner({ start, credentials: holder.readOnly(), client, clock, logger, signal: agent.#abort.signal, onPong: agent.#onPong.bind(agent) }),
        clock,
        options.stopDeadlineMs ?? DEFAULT_STOP_DEADLINE_MS,
        logger,
      );
    } catch (err) {
      agent.#abort.abort();
      holder.revoke();
      throw err;
    }
    agent.#state = 'running';
    if (agent.#stallAfterMs > 0 && agent.#runner.ping !== undefined) {
      agent.#probes = agent.#runProbes().catch((err: unknown) => logger.error({ err }, 'liveness probes failed'));
    }
    agent.#heartbeats = runHeartbeats({
      agentId: start.agentId,
      client,
      clock,
      intervalMs: options.heartbeatIntervalMs,
      signal: agent.#abort.signal,
      // Bound, not a closure over `options`: each idle agent holds this for its life.
      onBeat: agent.#onBeat.bind(agent),
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

  /** Settles if the agent ends by itself (a process agent exiting); never for a module agent. */
  get ended(): Promise<AgentEnd> {
    return this.#runner?.ended ?? new Promise<AgentEnd>(() => undefined);
  }

  /**
   * Applies a rotated credential to this agent's holder and, once it is there,
   * lets the runner pass it on (a process agent's token file is replaced before
   * this resolves). Rejects if the runner could not; the holder keeps it anyway.
   */
  async applyCredential(credential: Credential, epoch: string): Promise<ApplyResult> {
    const result = this.holder.apply(credential, epoch);
    if (result === 'applied' && this.#state === 'running') await this.#runner?.applyCredential?.(credential);
    return result;
  }

  /** A Deliver or Skip from the control plane (duplicates are dropped by seq). */
  onDelivery(event: DeliveryEvent<DeliveredMessage>): void {
    // Handing over: what comes now is for the agent's next placement (nothing of it was acknowledged here).
    if (this.#handingOver !== undefined && (event.type === 'deliver' || event.type === 'skip')) return;
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
        this.#send({ ack: { agentId: this.agentId, seq: effect.seq, ok: true, error: '', incarnation: this.incarnation } });
        return;
      case 'nack':
        this.#send({ ack: { agentId: this.agentId, seq: effect.seq, ok: false, error: effect.error, incarnation: this.incarnation } });
        return;
    }
  }

  /**
   * Probes a process agent every third of the stall period, on the clock,
   * until it stops; each unanswered stretch is judged when the stall period
   * since its first probe has passed. An agent whose process is gone is not
   * probed (nor ever reported stalled): its end is reported instead.
   */
  async #runProbes(): Promise<void> {
    const signal = this.#abort.signal;
    const intervalMs = Math.max(1, Math.floor(this.#stallAfterMs / 3));
    while (!signal.aborted) {
      if (this.#runner?.ping?.() !== true) return;
      if (this.#unansweredSinceMs === undefined) {
        this.#unansweredSinceMs = this.#clock.now();
        this.#clock
          .sleep(this.#stallAfterMs, signal)
          .then(() => this.#judge())
          .catch((err: unknown) => this.#logger.error({ err }, 'judging liveness failed'));
      }
      await this.#clock.sleep(intervalMs, signal);
    }
  }

  #onBeat(result: { isOk: boolean; error?: Error }): void {
    if (!result.isOk) this.#logger.warn({ err: result.error, gen: this.holder.generation }, 'heartbeat failed');
    this.#onHeartbeat({ ...result, generation: this.holder.generation });
  }

  #onPong(): void {
    this.#unansweredSinceMs = undefined;
    this.#judge();
  }

  /**
   * Whether the agent is stalled now: a probe unanswered for the stall period,
   * or a message held past the handler deadline. Reported to the control
   * plane (an AgentEvent `stalled`, or `running` when it answers again) only
   * when that changes. A signal, never a kill.
   */
  #judge(): void {
    if (this.#state !== 'running') return;
    const nowMs = this.#clock.now();
    const reasons: string[] = [];
    const unansweredSinceMs = this.#unansweredSinceMs;
    // A probe a dead process left unanswered says nothing: its end is reported instead, never a stall.
    const isAlive = this.#runner?.isAlive?.() ?? true;
    if (isAlive && unansweredSinceMs !== undefined && nowMs - unansweredSinceMs >= this.#stallAfterMs) {
      reasons.push(`its process is alive but has not answered its liveness probe for ${nowMs - unansweredSinceMs} ms (stall after ${this.#stallAfterMs} ms)`);
    }
    const inHand = this.#inHand;
    if (inHand !== undefined && this.#handlerDeadlineMs > 0 && nowMs - inHand.sinceMs >= this.#handlerDeadlineMs) {
      reasons.push(`it has held message ${inHand.seq} for ${nowMs - inHand.sinceMs} ms, past its handler deadline of ${this.#handlerDeadlineMs} ms`);
    }
    const isStalled = reasons.length > 0;
    if (isStalled === this.#isStalled) return;
    this.#isStalled = isStalled;
    const detail = isStalled ? reasons.join('; ') : 'answering again';
    this.#send({ agentEvent: { agentId: this.agentId, state: isStalled ? 'stalled' : 'running', detail, incarnation: this.incarnation } });
    if (isStalled) this.#logger.warn({ detail }, 'agent stalled');
    else this.#logger.info('agent answering again');
    this.#onLiveness?.({ isStalled, detail });
  }

  /** Hands one message to the runner; its outcome feeds back into the reducer. */
  async #handle(seq: number, message: DeliveredMessage): Promise<void> {
    let outcome: DeliveryEvent<DeliveredMessage>;
    const handled = new AbortController();
    this.#inHand = { seq, sinceMs: this.#clock.now() };
    if (this.#handlerDeadlineMs > 0) {
      this.#clock
        .sleep(this.#handlerDeadlineMs, handled.signal)
        .then(() => {
          if (!handled.signal.aborted) this.#judge();
        })
        .catch((err: unknown) => this.#logger.error({ err }, 'judging the handler deadline failed'));
    }
    try {
      await this.#runner?.handle(message);
      outcome = { type: 'taken', seq };
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      this.#logger.info({ seq, error }, 'agent refused a message');
      outcome = { type: 'refused', seq, error: error.slice(0, 512) };
    } finally {
      handled.abort();
      this.#inHand = undefined;
    }
    this.#judge();
    if (this.#state === 'stopped') return;
    this.onDelivery(outcome);
    if (outcome.type === 'taken') this.#onTaken?.(seq);
  }

  /**
   * Hands the agent over (a drain): from now on it takes nothing more (what
   * was delivered and not yet given is dropped, never acknowledged, so its
   * next placement gets it), the message in hand may finish until the handler
   * deadline counted from the handler's start (the stop deadline when there is
   * none), and its outcome is acknowledged; then the agent is stopped as
   * {@link stop} does. Resolves with the seq taken. Idempotent.
   */
  handOver(): Promise<HandOverResult> {
    this.#handingOver ??= this.#handOver();
    return this.#handingOver;
  }

  async #handOver(): Promise<HandOverResult> {
    // Buffered deliveries go: only the message in hand is finished.
    this.#delivery = { ...this.#delivery, buffer: new Map() };
    let detail = 'handed over';
    const inHand = this.#inHand;
    if (inHand !== undefined && this.#state === 'running') {
      const deadlineMs = this.#handlerDeadlineMs > 0 ? this.#handlerDeadlineMs : this.#stopDeadlineMs;
      const finished = new AbortController();
      // #handle settles every outcome itself; it never rejects.
      this.#handling.then(
        () => finished.abort(),
        () => finished.abort(),
      );
      await this.#clock.sleep(Math.max(0, inHand.sinceMs + deadlineMs - this.#clock.now()), finished.signal);
      if (!finished.signal.aborted) {
        detail = `handed over with message ${inHand.seq} unfinished at its handler deadline of ${deadlineMs} ms (not acknowledged: delivered again to its next placement)`;
        this.#logger.warn({ seq: inHand.seq, deadlineMs }, 'hand-over: the message in hand did not finish by its deadline');
      }
      finished.abort();
    }
    const takenSeq = this.#delivery.takenSeq;
    const outcome = await this.stop();
    return { takenSeq, outcome, detail };
  }

  /**
   * Stops heartbeats and the runner, then revokes the holder; idempotent.
   * Bounded by the stop deadline: an agent still holding on then (a message
   * in hand that ignores its abort signal, a process that ignores SIGTERM) is
   * abandoned — holder revoked, its runner's `abandon()` (a process group is
   * killed, token files deleted), and whatever it still reports ignored (the
   * state is `stopped`, so no outcome reaches the reducer).
   */
  stop(): Promise<StopOutcome> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<StopOutcome> {
    this.#state = 'stopped';
    this.onDelivery({ type: 'stop' });
    this.#abort.abort();
    const runner = this.#runner;
    const letGo = new AbortController();
    this.#stopGracefully(runner).then(
      () => letGo.abort(),
      (err: unknown) => {
        this.#logger.warn({ err }, 'agent failed to stop cleanly');
        letGo.abort();
      },
    );
    // Armed at once, so whoever advances the clock after the stop began sees the deadline counted from here.
    await this.#clock.sleep(this.#stopDeadlineMs, letGo.signal);
    const outcome: StopOutcome = letGo.signal.aborted ? 'stopped' : 'abandoned';
    letGo.abort();
    this.holder.revoke();
    this.#runner = undefined;
    if (outcome === 'abandoned') {
      this.#logger.warn({ deadlineMs: this.#stopDeadlineMs }, 'agent did not stop by the deadline; abandoned');
      try {
        await runner?.abandon?.();
      } catch (err) {
        this.#logger.warn({ err }, 'failed to abandon the agent');
      }
    }
    return outcome;
  }

  /** What a stop waits for when the agent cooperates. */
  async #stopGracefully(runner: AgentRunner | undefined): Promise<void> {
    await this.#heartbeats;
    await this.#probes;
    // The runner settles the message in hand: a module finishes it, a process is stopped.
    await runner?.close();
    await this.#handling;
  }
}
