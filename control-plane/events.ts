import { EventEmitter } from 'node:events';
import type { RotationReason } from './rotation/rotation-reason.js';
import type { AgentStateName } from './store/store.js';

/** What the control plane reports as it happens; no event carries a token. */
export interface ControlPlaneEventMap {
  /** An agent heartbeat was accepted; `generation` is that of the token it carried. */
  heartbeat: [{ agentId: string; subject: string; generation: number; tokenId: string }];
  /**
   * A host's stream opened (Welcome sent). `isReconnect`: it authenticated with
   * a host credential, so the host had a stream before (to this control plane
   * or another); false for a stream that joined with a join token.
   */
  'host-connected': [{ hostId: string; sessionId: string; isReconnect: boolean }];
  /** A host's stream ended; `lastContactMs`: when its last message arrived (our clock). */
  'host-disconnected': [{ hostId: string; sessionId: string; lastContactMs: number }];
  /** A host was declared lost: not connected for the lost-host grace. */
  'host-lost': [{ hostId: string; silentForMs: number }];
  /**
   * An agent changed state. `hostId`: its host then (the new one for
   * `starting`); `detail`: why; `endedAs`: a `pending` that follows an end by
   * itself (exited or failed) and a restart scheduled by its restart policy.
   */
  'agent-state': [{ agentId: string; state: AgentStateName; incarnation: number; hostId?: string | null; detail?: string; endedAs?: 'exited' | 'failed' }];
  /** A drain moved an agent to another host (started there under `incarnation`). */
  'agent-moved': [{ agentId: string; fromHostId: string; toHostId: string; incarnation: number }];
  /**
   * A credential was issued to an agent (or, with an empty agentId, to a host);
   * `rotationDueAtMs` is when it falls due for replacement (what the rotation
   * benchmark measures lateness against); `incarnation` is the agent's (0 for a host);
   * `reason`: `placed` (the first of a placement), or why a credential was rotated (a host's: `agentId` is empty).
   */
  'credential-issued': [
    { agentId: string; hostId: string; incarnation: number; generation: number; tokenId: string; expiresAtMs: number; rotationDueAtMs: number; reason: 'placed' | RotationReason },
  ];
  /**
   * A host acknowledged an agent's messages up to `seq` (cumulative), and it is
   * durable. `deliveredInMs`: for each of them this stream sent, the time from
   * its append to this commit (fewer than `count` when some went on an earlier stream).
   */
  'message-acked': [{ agentId: string; seq: number; count: number; deliveredInMs: readonly number[] }];
  /** A message was refused too often and dead-lettered. */
  'dead-letter': [{ agentId: string; seq: number; id: string }];
  /**
   * An agent token was accepted on an AgentService call (at `atMs`, the control
   * plane's clock): a log of these shows which incarnations were valid when.
   */
  'agent-verified': [{ agentId: string; hostId: string; incarnation: number; generation: number; tokenId: string; atMs: number; expiresAtMs: number }];
  /** A host's drain finished: nothing movable is left on it. */
  'host-drained': [{ hostId: string }];
  /** A signing key was promoted to signer by a rotation, or revoked. */
  'signing-key': [{ kid: string; purpose: string; change: 'rotated' | 'revoked'; detail: string }];
  /** A WatchEvents watcher was cut for not reading: `queued` events were waiting for it. */
  'event-watcher-cut': [{ queued: number }];
  /** A caller was refused; `reason` is a fixed word, safe as a metric label. */
  'auth-failure': [{ principal: 'admin' | 'agent' | 'host'; reason: string }];
  /** A host answered a Ping: its clock minus ours (ms), measured at the middle of the round trip. */
  'clock-skew': [{ hostId: string; skewMs: number }];
  /** An envelope from a host was refused. */
  reject: [{ hostId: string; what: string; agentId: string; reason: string }];
}

/** A typed emitter of {@link ControlPlaneEventMap}. */
export class ControlPlaneEvents extends EventEmitter<ControlPlaneEventMap> {}
