import type { Logger } from 'pino';
import type { Clock } from '../../common/clock.js';
import type { AgentClient } from './agent-client.js';
import type { ReadOnlyCredentials } from './credential-source.js';

/** A message delivered to an agent. */
export interface DeliveredMessage {
  seq: number;
  id: string;
  from: string;
  contentType: string;
  payload: Uint8Array;
  createdAtMs: number;
}

/** What a module agent is given. Frozen: nothing in it can set or revoke a token. */
export interface AgentContext {
  readonly agentId: string;
  readonly name: string;
  /** Its configuration (spec.config), as given. */
  readonly config: string;
  /** The agent's credential, read-only: `get()` at the moment of each call. */
  readonly credentials: ReadOnlyCredentials;
  /** AgentService, called as this agent (also what `AudienceTokens` mints through). */
  readonly agent: AgentClient;
  /** The host's clock: read time and wait through it, never `Date.now()` or `setTimeout`. */
  readonly clock: Clock;
  /** The agent's logger (tokens are redacted; log `jti`, never a token). */
  readonly logger: Logger;
  /** Aborted when the agent is stopped. */
  readonly signal: AbortSignal;
}

/** A running module agent. */
export interface AgentInstance {
  /** Called with each delivered message, one at a time, in order. Throwing refuses it (NACK). */
  onMessage?(message: DeliveredMessage): Promise<void>;
  /** Called once when the agent stops. */
  close?(): Promise<void>;
}

/** A module agent: called once per start with its context. */
export type AgentModule = (context: AgentContext) => AgentInstance | Promise<AgentInstance>;
