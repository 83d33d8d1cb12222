import { EventEmitter } from 'node:events';
import type { Refusal } from '../common/protocol.js';
import type { StopOutcome } from './hosted-agent.js';
import type { ReadOnlyCredentials } from './tools/credential-source.js';

/** What an agent host reports as it happens; no event carries a token. */
export interface AgentHostEventMap {
  /** Welcome received. */
  connected: [{ hostId: string; sessionId: string; epoch: string }];
  /**
   * The stream ended; the host tries again after `retryInMs` (its reconnect backoff, drawn under `capMs`;
   * `attempt` failed attempts since the last Welcome), or after about `retryAfterMs` when the control plane
   * deferred its Hello.
   */
  disconnected: [{ code: number; details: string; retryInMs: number; attempt: number; capMs: number; retryAfterMs: number | undefined }];
  /** The control plane refused the host for good. */
  refused: [{ refusal: Refusal; details: string }];
  /** An agent was started. `credentials` is its read-only view. */
  'agent-started': [{ agentId: string; incarnation: number; credentials: ReadOnlyCredentials }];
  /** An agent stopped: `abandoned` if it did not let go by the stop deadline (and was fenced off or killed). */
  'agent-stopped': [{ agentId: string; reason: string; outcome: StopOutcome }];
  /** An agent ended by itself (a process agent exited): `exited` for status 0, `failed` otherwise. */
  'agent-ended': [{ agentId: string; state: 'exited' | 'failed'; detail: string }];
  /** An agent became stalled (a probe unanswered, a message held past its deadline) or answers again; reported to the control plane too. */
  'agent-liveness': [{ agentId: string; incarnation: number; isStalled: boolean; detail: string }];
  /** A rotated credential was applied to an agent's holder. */
  'rotation-applied': [{ agentId: string; generation: number }];
  /** The host's own credential was stored. */
  'host-credential': [{ generation: number; expiresAtMs: number }];
  /** One heartbeat finished. */
  heartbeat: [{ agentId: string; isOk: boolean; generation: number; error?: Error }];
  /** An agent took the message at `seq`. */
  'message-taken': [{ agentId: string; seq: number }];
  /** The lowest time-to-expiry of any token held here fell below the warning threshold. */
  'expiry-warning': [{ lowestTimeToExpiryMs: number }];
  /** No contact with the control plane for its lost-host grace minus a margin: these agents were stopped, their token files deleted. */
  'self-fenced': [{ agentIds: string[]; silentForMs: number }];
  /** An agent was handed over (a drain): stopped after its last message taken, up to `takenSeq`. */
  'agent-handed-over': [{ agentId: string; incarnation: number; takenSeq: number; detail: string }];
  /** While this host drains: the control plane cannot hand this agent over (`blocked`: no host fits; `stays`: a drain does not move it). */
  'drain-update': [{ agentId: string; outcome: string; reason: string }];
  /** The control plane refused one envelope. */
  reject: [{ what: string; agentId: string; reason: string }];
}

/** A typed emitter of {@link AgentHostEventMap}. */
export class AgentHostEvents extends EventEmitter<AgentHostEventMap> {}
