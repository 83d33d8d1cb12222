/**
 * The control plane's durable state. Every method is one transaction and
 * returns a Promise, so an asynchronous engine (PostgreSQL) can implement the
 * same interface as the embedded synchronous one (SQLite).
 */

/** An agent's lifecycle, as the control plane sees it. */
export type AgentStateName =
  /** Not placed on a host yet. */
  | 'pending'
  /** Sent to its host; not reported started yet. */
  | 'starting'
  /** Its host reported it started. */
  | 'running'
  /** Heartbeats missed, or a message held past its handler deadline. */
  | 'stalled'
  /** Its host has been gone longer than the grace period. */
  | 'lost'
  /** It ended by itself. */
  | 'exited'
  /** It ended with an error. */
  | 'failed'
  /** An operator stopped it; all of its tokens are revoked. */
  | 'stopped';

/** States in which an agent is meant to be on a host and holds a live credential. */
export const LIVE_AGENT_STATES: readonly AgentStateName[] = ['starting', 'running', 'stalled'];

/** Final states: the agent runs no more unless an operator ensures it again; its outbox takes no new mail. */
export const ENDED_AGENT_STATES: readonly AgentStateName[] = ['stopped', 'exited', 'failed'];

/**
 * What the control plane does when an agent ends by itself:
 * - `never`: it stays ended (`exited` or `failed`).
 * - `on-failure`: started again, with backoff, after it `failed`.
 * - `always`: started again, with backoff, after it `failed` or `exited`.
 * An operator stop is never undone by a policy.
 */
export type RestartPolicyName = 'never' | 'on-failure' | 'always';

/** What to run for an agent. */
export interface AgentSpecRecord {
  kind: string;
  module: string;
  command: string;
  args: string[];
  config: string;
  /** Process agents: audience tokens kept in files by the host (absent in records from before them). */
  audienceFiles?: { files: { name: string; audience: string }[] };
  /** Overrides the host's `--handler-deadline` for this agent (0: none); absent: the host's. */
  handlerDeadlineMs?: number;
}

/** A key/value label. */
export interface LabelRecord {
  key: string;
  value: string;
}

/** One agent. */
export interface AgentRecord {
  agentId: string;
  name: string;
  state: AgentStateName;
  /** The host it is placed on (or, while pending, the host it was asked for). */
  hostId: string | null;
  /** The host its dispatch or ensure named (null: none, placed by labels); kept to tell a changed spec apart. */
  requestedHostId: string | null;
  /** While pending: labels a host must carry to be chosen. */
  hostLabels: LabelRecord[];
  spec: AgentSpecRecord;
  /** Bumped at every placement; tokens of older incarnations are refused. */
  incarnation: number;
  /** Bumped at every credential issued. */
  generation: number;
  tokenId: string | null;
  issuedAtMs: number;
  expiresAtMs: number;
  /** When the current credential's rotation falls due (jittered). */
  rotationDueAtMs: number;
  /** Expiry of the generation before `generation` (0: none), to record an Ack that arrives late. */
  previousExpiresAtMs: number;
  /** The highest generation the agent's host acknowledged holding for this placement (0: none yet). */
  ackedGeneration: number;
  /** Expiry of the acknowledged generation (0: none). */
  ackedExpiresAtMs: number;
  createdAtMs: number;
  updatedAtMs: number;
  detail: string;
  /** The highest seq appended to its outbox (0: none yet). */
  lastSeq: number;
  /** Every message up to this seq has been taken by the agent (or skipped as dead). */
  ackedSeq: number;
  /** Times it was started again after its first start (a new incarnation, whatever the cause). */
  restarts: number;
  /** What it last failed with ('' if it never failed), kept when it runs again. */
  lastError: string;
  /** When it last failed (0: never). */
  lastErrorAtMs: number;
  /**
   * Made (or last started again) by `ensure`: when its host is lost it is fenced and started on
   * another host; a dispatched agent waits, `lost`, for its host to come back.
   */
  isEnsured: boolean;
  restartPolicy: RestartPolicyName;
  /** Ends in a row without a healthy period between them (counted against its restart budget). */
  failures: number;
  /** While pending after an end: not placed before this time (0: none). Persisted, so a restarted control plane keeps it. */
  restartAtMs: number;
  /** When it last became `running` (0: not running in this placement). */
  runningSinceMs: number;
}

/** At most this many transitions are kept per agent (the oldest go first). */
export const MAX_TRANSITIONS_PER_AGENT = 50;

/**
 * One change of an agent's state, placement (host) or incarnation, with why:
 * recorded by the store in the same transaction as the change itself, so no
 * code path can change an agent without a trace.
 */
export interface AgentTransitionRecord {
  agentId: string;
  atMs: number;
  /** null: the agent was created by this transition (or the row predates the history: see migration 6). */
  fromState: AgentStateName | null;
  toState: AgentStateName;
  /** The host after the transition (null: none). */
  hostId: string | null;
  /** The incarnation after the transition. */
  incarnation: number;
  reason: string;
}

/**
 * A message's state in an outbox:
 * - `pending`: not acknowledged yet; delivered (again) until it is.
 * - `acked`: taken by the agent; its payload is dropped, the row kept a while for idempotency.
 * - `dead`: refused too often; held for an operator, skipped by delivery.
 * - `requeued`: a dead letter appended again under a new seq.
 */
export type MessageStateName = 'pending' | 'acked' | 'dead' | 'requeued';

/**
 * Who sent a message: an agent (its verified token's subject) or the operator
 * (an AdminService call). The sender scopes idempotency keys, so one sender's
 * key never answers for another's message.
 */
export type MessageSender = { kind: 'agent'; agentId: string } | { kind: 'operator' };

/** The `from` a recipient sees: the sending agent's id, or `operator`. */
export function senderName(sender: MessageSender): string {
  return sender.kind === 'agent' ? sender.agentId : 'operator';
}

/**
 * The sender as the scope of its idempotency keys: `agent:<id>` or `operator`.
 * Unlike {@link senderName}, an agent whose id is `operator` (a valid id) is not
 * taken for the operator: agent ids cannot contain `:`.
 */
export function senderPrincipal(sender: MessageSender): string {
  return sender.kind === 'agent' ? `agent:${sender.agentId}` : 'operator';
}

/** One message in an agent's outbox. */
export interface MessageRecord {
  agentId: string;
  seq: number;
  id: string;
  from: string;
  contentType: string;
  payload: Buffer;
  createdAtMs: number;
  state: MessageStateName;
  attempts: number;
  lastError: string;
  idempotencyKey: string | null;
}

/** A message to append; who sent it is the request's {@link AppendRequest.sender}. */
export interface NewMessage {
  id: string;
  contentType: string;
  payload: Buffer;
  createdAtMs: number;
  /** Unique per (recipient, sender) while the message is kept; null for none. */
  idempotencyKey: string | null;
}

/**
 * Messages from one sender to append to one agent's outbox, all or none.
 * Refused with FailedPreconditionError if the agent is in an
 * {@link ENDED_AGENT_STATES ended state} and any message is new (a retry whose
 * every key was taken gets its earlier answer).
 */
export interface AppendRequest {
  agentId: string;
  sender: MessageSender;
  messages: NewMessage[];
  /** Refuse (ResourceExhaustedError) if the outbox would hold more unacknowledged or dead-lettered messages than this. */
  maxPending: number;
  /** Refuse (ResourceExhaustedError) if the payloads of its unacknowledged and dead-lettered messages would exceed this many bytes. */
  maxPendingBytes: number;
}

/** Where one appended message went. */
export interface AppendResult {
  id: string;
  seq: number;
  /** An earlier append with the same idempotency key already holds it. */
  isDuplicate: boolean;
}

/** A cumulative acknowledgement: every pending message of the agent up to `seq` was taken. */
export interface AckRecord {
  agentId: string;
  seq: number;
}

/** Appends and acks committed in one transaction (group commit). */
export interface OutboxBatch {
  appends: AppendRequest[];
  acks: AckRecord[];
}

/** A host's lifecycle. */
export type HostStateName =
  /** Enrolled; its join token has not been exchanged yet. */
  | 'enrolled'
  /** Holds a host credential. */
  | 'active'
  /** Revoked by an operator; its credentials are refused. */
  | 'revoked';

/** One host. */
export interface HostRecord {
  hostId: string;
  name: string;
  state: HostStateName;
  /** SHA-256 of the join token's secret, hex; null once burnt. */
  joinSecretHash: string | null;
  joinExpiresAtMs: number;
  /** The Connect session the join token is leased to, if any. */
  joinLeaseSessionId: string | null;
  /** The newest host credential issued. */
  credentialGeneration: number;
  /** Host tokens with a generation below this are refused (unacknowledged or superseded ones). */
  minValidGeneration: number;
  credentialIssuedAtMs: number;
  credentialExpiresAtMs: number;
  capacity: number;
  labels: LabelRecord[];
  lastSeenMs: number;
  createdAtMs: number;
  /** False: placement puts no new agent on it (cordoned; drain sets this). Agents it runs stay. */
  isSchedulable: boolean;
}

/**
 * Where a signing key is in its life:
 * - `standby`: published in the JWKS, signs nothing yet; promoted to signer once it
 *   has been published longer than the JWKS cache lifetime.
 * - `signing`: the one key of its purpose that signs new tokens.
 * - `verifying-only`: stopped signing (its private half is gone); published and
 *   accepted until the last token it signed has expired (`verifyUntilMs`), then deleted.
 * - `revoked`: compromised; every token it signed is refused, it is out of the
 *   JWKS, and its row stays until `verifyUntilMs` only so a token it signed is
 *   refused for that clear reason.
 */
export type SigningKeyState = 'standby' | 'signing' | 'verifying-only' | 'revoked';

/** One signing key. Private material never leaves the control plane. */
export interface SigningKeyRecord {
  kid: string;
  /** What the key signs; one signer and at most one standby per purpose (a store constraint). */
  purpose: string;
  state: SigningKeyState;
  /** JWK JSON of the private key; null once the key no longer signs. */
  privateJwk: string | null;
  /** JWK JSON of the public key. */
  publicJwk: string;
  /** When it was made, and published. */
  createdAtMs: number;
  /** When it started signing; null while it is a standby (or if it never signed). */
  signingSinceMs: number | null;
  /** When it stopped signing (or was revoked); null while standby or signing. */
  retiredAtMs: number | null;
  /**
   * Verifying-only and revoked keys: when the last token it signed has expired
   * (the row is deleted then). Null while standby or signing, or when the key
   * ring has yet to fix it (a key retired by a migration or a restore).
   */
  verifyUntilMs: number | null;
}

/**
 * One conditional step of a key's life, applied by
 * {@link Store.transitionSigningKeys}: `kid` moves from `from` to `to` only if
 * it is in `from` now. Moving to `verifying-only` or `revoked` deletes its
 * private half; moving to `signing` sets `signingSinceMs`.
 */
export interface SigningKeyTransition {
  kid: string;
  from: SigningKeyState;
  to: SigningKeyState;
  atMs: number;
  /** For `verifying-only` and `revoked`: when its row may go. */
  verifyUntilMs?: number | null;
}

/** A page of a listing. */
export interface Page<T> {
  items: T[];
  /** Pass back as `afterId` for the next page; null on the last one. */
  nextAfterId: string | null;
}

/** Fields of an agent that may change. */
export type AgentPatch = Partial<Omit<AgentRecord, 'agentId' | 'createdAtMs'>>;

/**
 * The columns of an agent that a credential rotation (and the Ack of one)
 * decides on: no labels, spec or detail, so reading it parses nothing.
 */
export type AgentCredentialState = Pick<
  AgentRecord,
  'agentId' | 'state' | 'hostId' | 'incarnation' | 'generation' | 'expiresAtMs' | 'previousExpiresAtMs' | 'ackedGeneration'
>;

/** Conditions an update requires; it does nothing when they do not hold. */
export interface AgentExpectation {
  incarnation?: number;
  generation?: number;
  states?: readonly AgentStateName[];
}

/** Fields of a host that may change. */
export type HostPatch = Partial<Omit<HostRecord, 'hostId' | 'createdAtMs'>>;

/**
 * Conditions a host update requires; it does nothing when they do not hold.
 * Every read-modify-write of a host names what it read, so two writers (two
 * streams, or two control planes on one store) cannot both win.
 */
export interface HostExpectation {
  states?: readonly HostStateName[];
  credentialGeneration?: number;
  minValidGeneration?: number;
  /** The session the join token must be leased to (null: leased to none). */
  joinLeaseSessionId?: string | null;
}

/** What placement needs of a host: its capacity and how many live agents it holds. */
export interface HostLoad {
  hostId: string;
  state: HostStateName;
  /** Agents it runs at most; 0 for no limit. */
  capacity: number;
  /** Its agents in a live state, kept by the store on every agent write. */
  load: number;
  /** See {@link HostRecord.isSchedulable}. */
  isSchedulable: boolean;
}

/** How {@link Store.placeAgent} went. */
export type PlaceAgentResult =
  | { outcome: 'placed'; agent: AgentRecord }
  /** The agent is gone or no longer as expected. */
  | { outcome: 'agent-changed' }
  /** The host holds `capacity` live agents already. */
  | { outcome: 'host-full' }
  /** No such host, or it is revoked, or not schedulable (for an agent it does not run already). */
  | { outcome: 'host-unavailable' };

/** A host's drain: `draining` while agents are being moved off it, `drained` once none is left to move. */
export type HostDrainState = 'draining' | 'drained';

/** A persisted drain (see {@link Store.setHostDrain}). */
export interface HostDrainRecord {
  hostId: string;
  state: HostDrainState;
  startedAtMs: number;
  updatedAtMs: number;
}

/** Room reserved on `toHostId` for an agent being moved off `fromHostId` (its incarnation then). */
export interface AgentMoveRecord {
  agentId: string;
  fromHostId: string;
  toHostId: string;
  incarnation: number;
  reservedAtMs: number;
}

/** How {@link Store.reserveMove} went. */
export type ReserveMoveResult = 'reserved' | 'agent-changed' | 'host-full' | 'host-unavailable';

/** Agents: their records, lifecycle transitions and placement on hosts. */
export interface AgentStore {
  /**
   * Makes the credential of every live agent issued in `[issuedFromMs, issuedUntilMs]`
   * due for rotation at `dueAtMs` (if it was due later), in one transaction: the
   * credentials a revoked key may have signed. Returns how many changed.
   */
  markAgentRotationsDue(issuedFromMs: number, issuedUntilMs: number, dueAtMs: number): Promise<number>;
  /** Throws AlreadyExistsError when the id is taken. Records its first transition with `reason`. */
  insertAgent(agent: AgentRecord, reason?: string): Promise<void>;
  getAgent(agentId: string): Promise<AgentRecord | undefined>;
  /** Only what a credential rotation needs of an agent (see {@link AgentCredentialState}). */
  getAgentCredentialState(agentId: string): Promise<AgentCredentialState | undefined>;
  /**
   * Applies `patch` if `expect` holds, like {@link AgentStore.updateAgent}, without
   * reading the agent back: true if it was written. For hot paths (rotations,
   * their Acks) that have what they need already. It records no transition, so
   * it refuses a patch of the state, host or incarnation (use updateAgent).
   */
  patchAgent(agentId: string, patch: AgentPatch, expect: AgentExpectation): Promise<boolean>;
  /**
   * Applies `patch` if `expect` holds and returns the updated agent; returns
   * undefined if the agent does not exist or `expect` does not hold. A change
   * of state, host or incarnation is recorded as a transition with `reason`
   * (default: the patch's detail), in the same transaction.
   */
  updateAgent(agentId: string, patch: AgentPatch, expect?: AgentExpectation, reason?: string): Promise<AgentRecord | undefined>;
  /**
   * Applies `patch` (which puts the agent on `patch.hostId`) if `expect` holds
   * and, when that adds the agent to the host's load, only if the host is not
   * revoked, is schedulable and has room: all in one transaction, so concurrent
   * placements (in one process or several) never overfill a host. Recorded as
   * {@link updateAgent} records.
   */
  placeAgent(agentId: string, patch: AgentPatch & { hostId: string }, expect: AgentExpectation, reason?: string): Promise<PlaceAgentResult>;
  /** The last `limit` (at most {@link MAX_TRANSITIONS_PER_AGENT}) transitions of an agent, oldest first. */
  listAgentTransitions(agentId: string, limit: number): Promise<AgentTransitionRecord[]>;
  listAgents(filter: { hostId?: string; states?: readonly AgentStateName[] }, afterId: string | null, limit: number): Promise<Page<AgentRecord>>;
  countAgentsByHost(states: readonly AgentStateName[]): Promise<Map<string, number>>;
  /** How many agents are in each state. */
  countAgentsByState(): Promise<Map<AgentStateName, number>>;
}

/** Hosts: their records, join-token leases, drains and move reservations. */
export interface HostStore {
  insertHost(host: HostRecord): Promise<void>;
  getHost(hostId: string): Promise<HostRecord | undefined>;
  /**
   * Applies `patch` if `expect` holds and returns the updated host; returns
   * undefined if the host does not exist or `expect` does not hold.
   */
  updateHost(hostId: string, patch: HostPatch, expect?: HostExpectation): Promise<HostRecord | undefined>;
  /** Capacity and load of each of `hostIds` that exists (one read per host, whatever the number of agents). */
  getHostLoads(hostIds: readonly string[]): Promise<Map<string, HostLoad>>;
  listHosts(afterId: string | null, limit: number): Promise<Page<HostRecord>>;
  /**
   * Leases the host's join token to `sessionId` if it is unexpired, unburnt and
   * not leased to a live session (`isLeaseLive` decides). Atomic: of two
   * concurrent callers, one wins.
   */
  leaseJoinToken(hostId: string, sessionId: string, nowMs: number, isLeaseLive: (sessionId: string) => boolean): Promise<HostRecord | undefined>;
  /**
   * Records `hostId`'s drain as `state` and makes the host unschedulable, in one
   * transaction; `null` deletes the drain and makes it schedulable again. Returns
   * the drain as it was before (undefined: none), or throws NotFoundError for no such host.
   */
  setHostDrain(hostId: string, state: HostDrainState | null, nowMs: number): Promise<HostDrainRecord | undefined>;
  getHostDrain(hostId: string): Promise<HostDrainRecord | undefined>;
  /** Every drain (a handful of rows: one per host drained and not uncordoned). */
  listHostDrains(): Promise<HostDrainRecord[]>;
  /**
   * Reserves room on `toHostId` for `agentId` (counted in its load from this
   * commit) if the agent is still live on `fromHostId` at `incarnation`, the
   * target is not revoked, schedulable and has room, and the agent has no
   * reservation yet. One transaction.
   */
  reserveMove(agentId: string, fromHostId: string, toHostId: string, incarnation: number, nowMs: number): Promise<ReserveMoveResult>;
  getMove(agentId: string): Promise<AgentMoveRecord | undefined>;
  listMoves(): Promise<AgentMoveRecord[]>;
  /** Drops `agentId`'s reservation, if any (its room on the target is free again). */
  releaseMove(agentId: string): Promise<void>;
}

/** Each agent's outbox of messages: appends, acks, dead letters. */
export interface OutboxStore {
  /** Unacknowledged messages over all outboxes. */
  countPendingMessages(): Promise<number>;
  /** Payload bytes held by every outbox (unacknowledged or dead-lettered: what outbox admission counts). */
  countOutboxBytes(): Promise<number>;

  /**
   * Applies a batch of appends and acks in one transaction. Each append succeeds
   * or fails on its own (NotFoundError, FailedPreconditionError,
   * ResourceExhaustedError) and its result or error is returned in order.
   */
  applyOutboxBatch(batch: OutboxBatch): Promise<(AppendResult[] | Error)[]>;
  /** Pending and dead messages of an agent after `afterSeq`, in seq order. */
  listDeliverable(agentId: string, afterSeq: number, limit: number): Promise<MessageRecord[]>;
  /**
   * Counts a refusal of a pending message; dead-letters it once `attempts`
   * reaches `maxAttempts`. Returns the updated message, or undefined if it is
   * not pending.
   */
  recordRefusal(agentId: string, seq: number, error: string, maxAttempts: number): Promise<MessageRecord | undefined>;
  /** Messages of an agent in `states`, after `afterSeq`, in seq order. */
  listMessages(agentId: string, states: readonly MessageStateName[], afterSeq: number, limit: number): Promise<MessageRecord[]>;
  /** Appends a dead letter again under a new seq (same id); returns the new seq. NotFoundError if no such dead letter. */
  requeueMessage(agentId: string, seq: number): Promise<number>;
  /** Deletes a dead letter. NotFoundError if no such dead letter. */
  purgeMessage(agentId: string, seq: number): Promise<void>;
  /**
   * Deletes acknowledged messages created before `ackedBeforeMs` (their
   * idempotency keys with them) and every message of agents that ended before
   * `endedBeforeMs`. Returns how many went.
   */
  pruneMessages(ackedBeforeMs: number, endedBeforeMs: number): Promise<number>;
}

/** Signing keys and their lifecycle. */
export interface KeyStore {
  /** Every signing key, oldest first. */
  listSigningKeys(): Promise<SigningKeyRecord[]>;
  /** Throws AlreadyExistsError when the kid is taken, or the purpose has a key in that state that must be alone (signing, standby). */
  insertSigningKey(key: SigningKeyRecord): Promise<void>;
  /**
   * Applies every transition, in order, in one transaction, or none: returns
   * false (changing nothing) if any key is not in its `from` state, or if the
   * result would give a purpose two signers or two standbys. This is how two
   * concurrent rotations (in one control plane or several) resolve: one wins.
   */
  transitionSigningKeys(transitions: readonly SigningKeyTransition[]): Promise<boolean>;
  /** Sets the verify-until of retired (verifying-only, revoked) keys that have none yet; returns how many. */
  fixSigningKeyVerifyUntil(verifyUntilMs: number): Promise<number>;
  /** Deletes retired (verifying-only, revoked) keys whose verify-until is at or before `nowMs`; returns their kids. */
  deleteExpiredSigningKeys(nowMs: number): Promise<string[]>;
}

/**
 * The control plane's durable state: every concern's store, on one engine
 * (SQLite or PostgreSQL), behind one epoch. Each engine runs the one contract
 * suite (test/control-plane/store/store-contract.ts).
 */
export interface Store extends AgentStore, HostStore, OutboxStore, KeyStore {
  /** The identity of this store's history; a restore mints a new one. */
  epoch(): Promise<string>;
  /** Closes the database; later calls throw ClosedError. Idempotent. */
  close(): Promise<void>;
}
