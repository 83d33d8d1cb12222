import type { Clock } from '../common/clock.js';
import { TetherError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Credential } from '../gen/tether/v1/common.js';
import type { StartAgent } from '../gen/tether/v1/host.js';
import type { AgentClient } from './tools/agent-client.js';
import type { DeliveredMessage } from './tools/agent-module.js';
import type { ReadOnlyCredentials } from './tools/credential-source.js';

/** How an agent ended by itself: `exited` (status 0) or `failed` (anything else), with a detail for the operator. */
export interface AgentEnd {
  state: 'exited' | 'failed';
  detail: string;
}

/** What a runner is given when its agent starts. */
export interface AgentRunnerContext {
  start: StartAgent;
  /** The agent's holder, read-only. */
  credentials: ReadOnlyCredentials;
  /** AgentService as this agent, on the host's channel. */
  client: AgentClient;
  clock: Clock;
  /** Already bound to the agent's id. */
  logger: Logger;
  /** Aborted when the agent is stopped. */
  signal: AbortSignal;
  /** Called when the agent answers a liveness probe ({@link AgentRunner.ping}). */
  onPong?: () => void;
}

/**
 * What runs one agent and takes its messages: a module instance in-process or a
 * child process. The {@link HostedAgent} around it owns the holder, the
 * heartbeats and the delivery state; the runner only hands messages over.
 */
export interface AgentRunner {
  /**
   * Hands one message to the agent (never two at once). Resolves when the
   * agent took it; rejects when it refused it (the error's message is the reason).
   */
  handle(message: DeliveredMessage): Promise<void>;
  /** Settles if the agent ends by itself (a process exits); a module never does. */
  readonly ended: Promise<AgentEnd>;
  /**
   * Called once a rotated credential is in the holder, before anything that
   * follows it on the stream reaches the agent (a process agent rewrites its
   * token file here). Rejects if the agent cannot see it.
   */
  applyCredential?(credential: Credential): Promise<void>;
  /**
   * Sends the agent a liveness probe, answered through the context's `onPong`
   * (a process agent: `{"ping":N}` on its stdin). Returns false, sending
   * nothing, when there is no live agent to ask (its process has exited): a
   * dead agent is never taken for a stalled one. Absent for module agents,
   * judged by their handler deadline alone.
   */
  ping?(): boolean;
  /** False once the agent's process has exited (its end may still be on its way): a probe it left unanswered means nothing then. */
  isAlive?(): boolean;
  /** Stops the agent and releases what the runner owns. Idempotent. */
  close(): Promise<void>;
  /**
   * Called when `close()` did not finish by the host's stop deadline: ends
   * what can be ended without the agent's help (a process group is killed)
   * and deletes what the agent could still use (its token file). Must not
   * wait for the agent. Idempotent.
   */
  abandon?(): Promise<void>;
}

/** Builds a runner for a starting agent; rejects if it cannot start. */
export type AgentRunnerFactory = (context: AgentRunnerContext) => Promise<AgentRunner>;

/** The agent refused a message (its own reason, never a token, is the message). */
export class MessageRefusedError extends TetherError {
  constructor(reason: string, options?: ErrorOptions) {
    super('failed-precondition', reason, options);
  }
}

/** The agent ended while it held a message. */
export class AgentEndedError extends TetherError {
  constructor(message = 'agent ended', options?: ErrorOptions) {
    super('unavailable', message, options);
  }
}

/** The agent did not start within the host's stop deadline (a module factory that never settles). */
export class AgentStartTimeoutError extends TetherError {
  constructor(message: string, options?: ErrorOptions) {
    super('unavailable', message, options);
  }
}
