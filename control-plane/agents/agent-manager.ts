import { HANDLER_DEADLINE_BOUNDS } from '../../common/cli.js';
import { randomBytes } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Clock } from '../../common/clock.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import { validateAudienceFiles } from '../../common/audience-files.js';
import type { Credential } from '../../gen/tether/v1/common.js';
import type { AgentEvent, Hello } from '../../gen/tether/v1/host.js';
import type { ControlPlaneEvents } from '../events.js';
import type { HostSession, HostSessions } from '../hosts/host-session.js';
import type { HeartbeatLedger } from '../services/heartbeat-ledger.js';
import { isPastHalfLife, isRotationDue, rotationDueAtMs } from '../rotation/rotation-policy.js';
import type { RotationReason } from '../rotation/rotation-reason.js';
import { RotationScheduler } from '../rotation/rotation-scheduler.js';
import {
  ENDED_AGENT_STATES,
  LIVE_AGENT_STATES,
  MAX_TRANSITIONS_PER_AGENT,
  type AgentCredentialState,
  type AgentPatch,
  type AgentRecord,
  type AgentSpecRecord,
  type AgentStateName,
  type AgentTransitionRecord,
  type HostLoad,
  type LabelRecord,
  type PlaceAgentResult,
  type RestartPolicyName,
  type Store,
} from '../store/store.js';
import type { TokenIssuer } from '../tokens/token-issuer.js';
import type { IssuedToken, TokenClaims } from '../tokens/token-kinds.js';
import type { TokenVerifier } from '../tokens/token-verifier.js';
import type { DeliveryManager } from '../delivery/delivery-manager.js';
import { AgentMoves, type MoveOutcome } from './agent-move.js';
import { KeyedMutex } from './keyed-mutex.js';
import { decidePlacement, type PlacementCandidate } from './placement.js';
import { decideRestart, DEFAULT_RESTART_BUDGET, type RestartBudget } from './restart-policy.js';
import { specDifferences } from './spec-differences.js';

/** States of an agent that belongs on its host: live, or `lost` there and waiting for it (not fenced). */
const ON_HOST_STATES: readonly AgentStateName[] = [...LIVE_AGENT_STATES, 'lost'];
const AGENT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** Added to a stopped agent's detail when its host reports it abandoned at the stop deadline. */
const ABANDONED_SUFFIX = ' (abandoned by its host at the stop deadline)';
const PAGE = 500;
/** Tries at an end that another writer keeps changing under it (another control plane on the store). */
const MAX_END_ATTEMPTS = 5;

/** Options of {@link AgentManager}. */
export interface AgentManagerOptions {
  store: Store;
  issuer: TokenIssuer;
  verifier: TokenVerifier;
  sessions: HostSessions;
  clock: Clock;
  logger: Logger;
  events: ControlPlaneEvents;
  agentTokenTtlMs: number;
  /** Allowed clock skew on `exp`: a fenced agent waits this much past its last token's expiry before it starts elsewhere. */
  clockToleranceMs: number;
  /** When false, credentials are issued once and never replaced (to show what goes wrong). */
  isRotationEnabled: boolean;
  /** The signing-rate cap, or `auto` to size it from the agents scheduled (see RotationScheduler). */
  maxRotationsPerSecond: number | 'auto';
  /** Scheduled rotations running at once at most (their store writes then share a commit). */
  maxConcurrentRotations: number;
  /** Uniform in [0, 1); the rotation jitter. */
  random: () => number;
  /** Reports an envelope-level violation by a host (answered with Reject). */
  reject: (session: HostSession, what: string, agentId: string, reason: string) => void;
  delivery: DeliveryManager;
  /** Last heartbeats: an agent is forgotten whenever it ends or moves, so nothing stays for ended agents. */
  heartbeats: HeartbeatLedger;
  /** Backoff and budget of restart policies (default {@link DEFAULT_RESTART_BUDGET}). */
  restartBudget?: RestartBudget;
  /**
   * How long a drain waits for a host to confirm an agent's hand-over before it
   * reports the agent blocked (default {@link DEFAULT_HAND_OVER_TIMEOUT_MS}: past
   * a host's default handler deadline plus its stop deadline).
   */
  handOverTimeoutMs?: number;
}

/** The default of {@link AgentManagerOptions.handOverTimeoutMs}: 30 min. */
export const DEFAULT_HAND_OVER_TIMEOUT_MS = 30 * 60_000;

/** What to create. */
export interface DispatchRequest {
  agentId: string;
  name: string;
  spec: AgentSpecRecord;
  hostId: string;
  hostLabels: LabelRecord[];
  /** Undefined: the default (`never` for a dispatch, `on-failure` for an agent created by ensure); an ensure compares it only when given. */
  restartPolicy?: RestartPolicyName | undefined;
}

/** How {@link AgentManager.ensure} went. */
export interface EnsureResult {
  agent: AgentRecord;
  /** Created, started again after it ended, or restarted with a new spec by this call. */
  isCreated: boolean;
  /** Its spec was replaced (only with `isUpdate`). */
  isUpdated: boolean;
}

/** An agent with its recent transitions, oldest first, for `agents describe`. */
export interface AgentDescription {
  agent: AgentRecord;
  transitions: AgentTransitionRecord[];
}

/**
 * Whether an agent whose host is lost is started on another host (once its
 * old incarnation is fenced and its last tokens have expired) rather than left
 * `lost` until its host comes back: agents made by `ensure`, and agents with a
 * restart policy (`on-failure` or `always`).
 */
export function isRescheduledWhenLost(agent: Pick<AgentRecord, 'isEnsured' | 'restartPolicy'>): boolean {
  return agent.isEnsured || agent.restartPolicy !== 'never';
}

/** Converts an issued token into the wire form. */
export function toCredential(issued: IssuedToken): Credential {
  const { claims } = issued;
  return {
    token: issued.token,
    issuedAtMs: claims.issuedAtMs,
    expiresAtMs: claims.expiresAtMs,
    generation: claims.generation,
    keyId: claims.keyId,
    tokenId: claims.tokenId,
  };
}

/** Credential fields safe to log. */
function logFields(claims: TokenClaims): Record<string, unknown> {
  return { jti: claims.tokenId, kid: claims.keyId, gen: claims.generation, exp: claims.expiresAtMs };
}

/**
 * Owns agents: creates them, places them on hosts, issues and rotates their
 * credentials, fences old incarnations and stops them. Every operation on one
 * agent runs under that agent's lock.
 */
export class AgentManager {
  readonly #options: AgentManagerOptions;
  readonly #locks = new KeyedMutex();
  readonly #scheduler: RotationScheduler;
  readonly #logger: Logger;
  /** The placement sweep running now (see {@link requestPlacement}), if any. */
  #sweep: Promise<void> | undefined;
  /** Something changed since the running sweep read its page: run another one after it. */
  #isSweepRequested = false;
  #isClosed = false;
  /**
   * The state of live agents as this control plane last wrote or read it, so a
   * Heartbeat (whose token was already verified, which is what refuses a
   * stopped or moved agent) answers without a store read. Entries go when an
   * agent ends or moves; at most one per live agent.
   */
  readonly #liveStates = new Map<string, AgentStateName>();
  /** Bumped by every state noted: a store read fills the map only if no state was noted while it was awaited. */
  #stateNotes = 0;
  /** Aborted at close: ends the waits of fenced agents for their last tokens to expire. */
  readonly #closing = new AbortController();
  /** Fenced agents waiting for their old incarnation's last token to expire, by id (at most one wait each). */
  readonly #fenceWaits = new Map<string, Promise<void>>();
  /** Per stream, the stale copies its host was told to stop at Hello (their ends are expected, not violations). */
  readonly #staleCopies = new WeakMap<HostSession, Set<string>>();
  readonly #restartBudget: RestartBudget;
  /** The wait of each agent pending a restart (see {@link #scheduleRestart}); at most one per agent. */
  readonly #restartWaits = new Map<string, AbortController>();
  /** Reading the restarts a previous control plane scheduled (see {@link start}). */
  #resumingRestarts: Promise<void> | undefined;
  /** Moves of agents off draining hosts (see agent-move.ts). */
  readonly #moves: AgentMoves;

  constructor(options: AgentManagerOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'agents' });
    this.#restartBudget = options.restartBudget ?? DEFAULT_RESTART_BUDGET;
    this.#scheduler = new RotationScheduler({
      clock: options.clock,
      logger: options.logger.child({ component: 'rotation' }),
      maxPerSecond: options.maxRotationsPerSecond,
      tokenTtlMs: options.agentTokenTtlMs,
      maxInFlight: options.maxConcurrentRotations,
      rotate: async (agentId, reason) => {
        await this.rotate(agentId, reason);
      },
    });
    this.#moves = new AgentMoves({
      store: options.store,
      sessions: options.sessions,
      clock: options.clock,
      logger: options.logger,
      delivery: options.delivery,
      events: options.events,
      handOverTimeoutMs: options.handOverTimeoutMs ?? DEFAULT_HAND_OVER_TIMEOUT_MS,
      lock: (agentId, section) => this.#locks.run(agentId, section),
      isMovable: (agent) => isRescheduledWhenLost(agent),
      candidates: (open, spec) => this.#candidates(open, spec),
      startOn: (agent, session, reason) => this.#startOn(agent, session, reason),
      forgetPlacement: (agentId) => this.#forgetPlacement(agentId),
      fenceToPending: async (agent, reason) => {
        const pending = await this.#options.store.updateAgent(
          agent.agentId,
          { state: 'pending', hostId: agent.requestedHostId, detail: reason, updatedAtMs: this.#options.clock.now(), restartAtMs: 0, runningSinceMs: 0 },
          { incarnation: agent.incarnation, states: [agent.state] },
          reason,
        );
        if (pending === undefined) return;
        this.#forgetPlacement(agent.agentId);
        this.#onStateChanged(agent, 'pending', reason);
        this.requestPlacement();
      },
    });
  }

  /**
   * Moves a live agent off `fromHostId` (a drain): reserve a target, hand it
   * over, fence, start it there (see agent-move.ts). Resolves once it runs on
   * its target, or with why it stays.
   */
  moveAgent(agentId: string, fromHostId: string, signal?: AbortSignal): Promise<MoveOutcome> {
    return this.#moves.move(agentId, fromHostId, signal);
  }

  /** The rotation scheduler's signing-rate cap in force now (for `auto`, sized from the agents scheduled). */
  get maxRotationsPerSecond(): number {
    return this.#scheduler.maxPerSecond;
  }

  /** The soonest expiry (ms since the epoch) of the scheduled agents' tokens, Infinity when none is (for metrics; a scan). */
  lowestScheduledExpiresAtMs(): number {
    return this.#scheduler.lowestExpiresAtMs();
  }

  /** Rotations due and waiting for the signing budget (for metrics). */
  get rotationsWaiting(): number {
    return this.#scheduler.dueWaiting;
  }

  /** How many agents have a rotation scheduled: the live agents whose hosts are connected. */
  get scheduledAgents(): number {
    return this.#scheduler.size;
  }

  /** Starts the rotation scheduler, and the waits of restarts scheduled before this control plane started. */
  start(): void {
    if (this.#options.isRotationEnabled) this.#scheduler.start();
    this.#resumingRestarts = this.#resumeRestarts().catch((err: unknown) => {
      if (!this.#isClosed) this.#logger.error({ err }, 'reading scheduled restarts failed; they happen when a host next connects');
    });
  }

  /** Arms a wait for every pending agent whose restart time the store holds (a previous control plane scheduled it). */
  async #resumeRestarts(): Promise<void> {
    for (let afterId: string | null = null; ; ) {
      if (this.#isClosed) return;
      const page = await this.#options.store.listAgents({ states: ['pending'] }, afterId, PAGE);
      for (const agent of page.items) if (agent.restartAtMs > 0) this.#scheduleRestart(agent.agentId, agent.restartAtMs);
      afterId = page.nextAfterId;
      if (afterId === null) return;
    }
  }

  /**
   * Places `agentId` again at `restartAtMs`, on the injected clock: a placement
   * sweep then, which starts it (its restart time has come) if a host fits.
   * Replaces any restart it had waiting.
   */
  #scheduleRestart(agentId: string, restartAtMs: number): void {
    this.#cancelRestart(agentId);
    if (this.#isClosed) return;
    const wait = new AbortController();
    this.#restartWaits.set(agentId, wait);
    this.#options.clock
      .sleep(Math.max(0, restartAtMs - this.#options.clock.now()), wait.signal)
      .then(() => {
        if (wait.signal.aborted) return;
        this.#restartWaits.delete(agentId);
        this.requestPlacement();
      })
      .catch((err: unknown) => this.#logger.error({ err, agentId }, 'restart wait failed; the next placement sweep starts it'));
  }

  #cancelRestart(agentId: string): void {
    this.#restartWaits.get(agentId)?.abort();
    this.#restartWaits.delete(agentId);
  }

  /** Agents waiting for a restart time (for tests and metrics). */
  get restartsWaiting(): number {
    return this.#restartWaits.size;
  }

  /**
   * Resumes the waits of agents fenced before a restart (state `lost`, no
   * host): each is placed again once its old incarnation's last token has
   * expired, plus the clock tolerance.
   */
  async resumeFenced(): Promise<void> {
    for (let afterId: string | null = null; ; ) {
      const page = await this.#options.store.listAgents({ states: ['lost'] }, afterId, PAGE);
      for (const agent of page.items) if (agent.hostId === null) this.#awaitFenceExpiry(agent);
      afterId = page.nextAfterId;
      if (afterId === null) break;
    }
  }

  /** True when every rotation that time has made due is done and no placement sweep runs (for tests on a fake clock). */
  isSettled(): boolean {
    return this.#scheduler.isSettled() && this.#locks.size === 0 && this.#sweep === undefined;
  }

  /** Stops the scheduler and waits for a placement sweep in progress. */
  async close(): Promise<void> {
    this.#isClosed = true;
    this.#closing.abort();
    for (const wait of this.#restartWaits.values()) wait.abort();
    this.#restartWaits.clear();
    await Promise.all(this.#fenceWaits.values());
    await this.#resumingRestarts;
    await this.#sweep;
    await this.#scheduler.close();
  }

  /**
   * Asks for pending agents to be placed soon, off the caller's path and locks:
   * for when room may have appeared (an agent ended or moved, so its host's load
   * dropped; a host became schedulable). Requests coalesce: while a sweep runs,
   * any number of them make exactly one more sweep after it, so a burst of ends
   * costs two sweeps, not one per end.
   */
  requestPlacement(): void {
    this.#isSweepRequested = true;
    if (this.#sweep !== undefined || this.#isClosed) return;
    this.#sweep = (async () => {
      // One turn first: the caller may still hold the lock of the agent whose end made the room.
      await nextTurn();
      try {
        while (this.#isSweepRequested && !this.#isClosed) {
          this.#isSweepRequested = false;
          await this.placePending();
        }
      } catch (err) {
        if (!this.#isClosed) this.#logger.error({ err }, 'placing pending agents failed; the next change tries again');
      } finally {
        this.#sweep = undefined;
      }
    })();
  }

  /**
   * Queues the rotation of `agentId` at `dueAtMs` on the rate-capped scheduler
   * (soonest-expiring first among those due); replaces any rotation it had queued.
   * For credentials that must be replaced early (their signing key was revoked).
   */
  scheduleRotation(agentId: string, dueAtMs: number, expiresAtMs: number, reason: RotationReason): void {
    this.#scheduler.schedule(agentId, dueAtMs, expiresAtMs, reason);
  }

  /** Whether a verified agent token has been revoked since it was issued. */
  async isAgentTokenRevoked(claims: TokenClaims): Promise<boolean> {
    const agent = await this.#options.store.getAgent(claims.subject);
    if (agent === undefined) return true;
    if (!LIVE_AGENT_STATES.includes(agent.state) && agent.state !== 'lost') return true;
    return agent.incarnation !== claims.incarnation || agent.hostId !== claims.hostId || claims.generation > agent.generation;
  }

  /**
   * The state of `agent`, from memory when this control plane knows it (it
   * wrote or read it since the agent was placed), else from the store.
   * NotFoundError if there is no such agent.
   */
  async stateOf(agentId: string): Promise<AgentStateName> {
    const known = this.#liveStates.get(agentId);
    if (known !== undefined) return known;
    const notesBefore = this.#stateNotes;
    const agent = await this.#options.store.getAgentCredentialState(agentId);
    if (agent === undefined) throw new NotFoundError(`no agent ${agentId}`);
    if (this.#stateNotes === notesBefore && LIVE_AGENT_STATES.includes(agent.state)) this.#liveStates.set(agentId, agent.state);
    return agent.state;
  }

  /** Records `state` as `agentId`'s (written to the store just now): kept while live, dropped otherwise. */
  #noteState(agentId: string, state: AgentStateName): void {
    this.#stateNotes++;
    if (LIVE_AGENT_STATES.includes(state)) this.#liveStates.set(agentId, state);
    else this.#liveStates.delete(agentId);
  }

  /** Creates an agent and places it. */
  async dispatch(request: DispatchRequest, reason = 'dispatched', isEnsured = false, defaultPolicy: RestartPolicyName = 'never'): Promise<AgentRecord> {
    validateSpec(request.spec);
    const agentId = request.agentId === '' ? `agent-${randomBytes(6).toString('hex')}` : request.agentId;
    if (!AGENT_ID_PATTERN.test(agentId)) throw new InvalidArgumentError('agent_id must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}');
    if (request.hostId !== '') await this.#requireHost(request.hostId, request.spec);
    const nowMs = this.#options.clock.now();
    await this.#options.store.insertAgent({
      agentId,
      name: request.name === '' ? agentId : request.name,
      state: 'pending',
      hostId: request.hostId === '' ? null : request.hostId,
      hostLabels: request.hostLabels,
      spec: request.spec,
      incarnation: 0,
      generation: 0,
      tokenId: null,
      issuedAtMs: 0,
      expiresAtMs: 0,
      rotationDueAtMs: 0,
      previousExpiresAtMs: 0,
      ackedGeneration: 0,
      ackedExpiresAtMs: 0,
      createdAtMs: nowMs,
      updatedAtMs: nowMs,
      detail: '',
      lastSeq: 0,
      ackedSeq: 0,
      requestedHostId: request.hostId === '' ? null : request.hostId,
      restarts: 0,
      lastError: '',
      lastErrorAtMs: 0,
      isEnsured,
      restartPolicy: request.restartPolicy ?? defaultPolicy,
      failures: 0,
      restartAtMs: 0,
      runningSinceMs: 0,
    }, reason);
    this.#logger.info({ agentId, kind: request.spec.kind }, 'agent dispatched');
    return this.#locks.run(agentId, () => this.#place(agentId));
  }

  /**
   * Creates the agent if missing, starts it again if it ended, and leaves it as
   * it is otherwise. A spec different from the agent's (its kind, module,
   * command, args, config, named host, labels, or a name given) is refused with
   * FailedPreconditionError naming the fields, unless `isUpdate`: then the spec
   * is replaced and the agent restarted under a new incarnation (its old copy
   * fenced first: every token of it refused, its host told to stop it).
   */
  async ensure(request: DispatchRequest, isUpdate = false): Promise<EnsureResult> {
    if (request.agentId === '') throw new InvalidArgumentError('agent_id is required');
    validateSpec(request.spec);
    if ((await this.#options.store.getAgent(request.agentId)) === undefined) {
      try {
        return { agent: await this.dispatch(request, 'created by ensure', true, 'on-failure'), isCreated: true, isUpdated: false };
      } catch (err) {
        // Created meanwhile by another ensure: compare with what it made, below.
        if ((await this.#options.store.getAgent(request.agentId)) === undefined) throw err;
      }
    }
    return this.#locks.run(request.agentId, async () => {
      const agent = await this.get(request.agentId);
      const differences = specDifferences(agent, request);
      if (differences.length > 0 && !isUpdate) {
        throw new FailedPreconditionError(
          `agent ${agent.agentId} exists with a different spec (differs in ${differences.join(', ')}); ` +
            'ensure it with --update (update: true) to replace the spec and restart it, or stop it first',
        );
      }
      const isEnded = ENDED_AGENT_STATES.includes(agent.state);
      if (differences.length === 0 && !isEnded) return { agent, isCreated: false, isUpdated: false };
      // Checked as a dispatch checks it: a host that does not exist or is revoked is refused, not waited for.
      if (request.hostId !== '') await this.#requireHost(request.hostId, request.spec);
      const reason = differences.length > 0 ? `spec updated by ensure (${differences.join(', ')})` : `started again by ensure after it ${agent.state}`;
      const nowMs = this.#options.clock.now();
      const updated = await this.#options.store.updateAgent(
        agent.agentId,
        {
          state: 'pending',
          name: request.name === '' ? agent.name : request.name,
          spec: request.spec,
          hostId: request.hostId === '' ? null : request.hostId,
          requestedHostId: request.hostId === '' ? null : request.hostId,
          hostLabels: request.hostLabels,
          updatedAtMs: nowMs,
          detail: reason,
          isEnsured: true,
          // An operator's ensure starts a fresh budget.
          failures: 0,
          restartAtMs: 0,
          runningSinceMs: 0,
          ...(request.restartPolicy === undefined ? {} : { restartPolicy: request.restartPolicy }),
        },
        { incarnation: agent.incarnation, states: [agent.state] },
        reason,
      );
      // Changed since it was read, under our lock: only another control plane on the store does that.
      if (updated === undefined) throw new FailedPreconditionError(`agent ${agent.agentId} changed while it was being ensured; try again`);
      this.#noteState(agent.agentId, 'pending');
      if (agent.state !== 'pending' && !isEnded) {
        // The old copy is fenced from here: pending is not a live state, so its tokens are refused
        // (isAgentTokenRevoked), and its next placement is a new incarnation, whose start supersedes it.
        this.#forgetPlacement(agent.agentId);
        this.#options.events.emit('agent-state', { agentId: agent.agentId, state: 'pending', incarnation: agent.incarnation, hostId: agent.hostId, detail: reason });
        const session = agent.hostId === null ? undefined : this.#options.sessions.get(agent.hostId);
        session?.send({ stopAgent: { agentId: agent.agentId, reason: 'spec updated' } });
        this.requestPlacement();
      }
      this.#logger.info({ agentId: agent.agentId, differences, from: agent.state }, reason);
      return { agent: await this.#place(agent.agentId), isCreated: true, isUpdated: differences.length > 0 };
    });
  }

  /** An agent with its last transitions (at most {@link MAX_TRANSITIONS_PER_AGENT}), or NotFoundError. */
  async describe(agentId: string): Promise<AgentDescription> {
    const agent = await this.get(agentId);
    return { agent, transitions: await this.#options.store.listAgentTransitions(agentId, MAX_TRANSITIONS_PER_AGENT) };
  }

  /** Drops what the control plane holds for an agent's placement that ended or moved: cached tokens, rotations, delivery, heartbeats. */
  #forgetPlacement(agentId: string): void {
    this.#options.verifier.forgetSubject('agent', agentId);
    this.#scheduler.unschedule(agentId);
    this.#options.delivery.detach(agentId);
    this.#options.heartbeats.forget(agentId);
  }

  /** The agent, or NotFoundError. */
  async get(agentId: string): Promise<AgentRecord> {
    const agent = await this.#options.store.getAgent(agentId);
    if (agent === undefined) throw new NotFoundError(`no agent ${agentId}`);
    return agent;
  }

  /** Stops an agent: revokes all of its tokens at once and tells its host. */
  async stop(agentId: string, reason: string): Promise<AgentRecord> {
    return this.#locks.run(agentId, async () => {
      for (let attempt = 1; ; attempt++) {
        const agent = await this.get(agentId);
        if (agent.state === 'stopped') return agent;
        const stopped = await this.#end(agent, 'stopped', reason === '' ? 'stopped by operator' : reason);
        if (stopped === undefined) {
          // Changed under us since it was read (another control plane): read it again and stop what it is now.
          if (attempt < MAX_END_ATTEMPTS) continue;
          throw new FailedPreconditionError(`agent ${agentId} kept changing while it was being stopped; try again`);
        }
        const session = agent.hostId === null ? undefined : this.#options.sessions.get(agent.hostId);
        session?.send({ stopAgent: { agentId, reason: stopped.detail } });
        return stopped;
      }
    });
  }

  /** Records what an agent says it is doing (shown as its detail). */
  async reportStatus(agentId: string, status: string): Promise<void> {
    await this.#options.store.updateAgent(agentId, { detail: status, updatedAtMs: this.#options.clock.now() }, { states: LIVE_AGENT_STATES });
  }

  /** An agent finished its work: it ends (exited), its tokens are revoked and its host stops it. */
  async complete(agentId: string, detail: string): Promise<void> {
    await this.#locks.run(agentId, async () => {
      const agent = await this.get(agentId);
      if (!LIVE_AGENT_STATES.includes(agent.state)) return;
      // Not ended when it changed meanwhile (moved, restarted): that placement is not the one that completed.
      if ((await this.#endByItself(agent, 'exited', detail === '' ? 'completed' : detail)) === undefined) return;
      const session = agent.hostId === null ? undefined : this.#options.sessions.get(agent.hostId);
      session?.send({ stopAgent: { agentId, reason: 'completed' } });
    });
  }

  /**
   * Issues a fresh credential to a live agent and pushes it to its host;
   * returns the new generation and expiry, or undefined if none was issued.
   * Reads only the columns a rotation needs and writes without reading back
   * (a rotation storm does this for every agent).
   */
  async rotate(agentId: string, why: RotationReason): Promise<{ generation: number; expiresAtMs: number } | undefined> {
    return this.#locks.run(agentId, async () => {
      const agent = await this.#options.store.getAgentCredentialState(agentId);
      if (agent === undefined) {
        if (why === 'forced') throw new NotFoundError(`no agent ${agentId}`);
        return undefined;
      }
      if (!LIVE_AGENT_STATES.includes(agent.state) || agent.hostId === null) {
        this.#scheduler.unschedule(agentId);
        if (why === 'forced') throw new FailedPreconditionError(`agent ${agentId} is ${agent.state}`);
        return undefined;
      }
      const found = this.#options.sessions.get(agent.hostId);
      const session = found?.state === 'closed' ? undefined : found;
      if (session === undefined) {
        // Nothing to push it down; the host's next Hello gets a fresh one if it is due.
        this.#scheduler.unschedule(agentId);
        if (why === 'forced') throw new FailedPreconditionError(`host ${agent.hostId} of agent ${agentId} is not connected`);
        return undefined;
      }
      const credential = await this.#reissue(agent, why);
      if (credential === undefined) return undefined;
      session.send({ tokenRotated: { agentId, credential } });
      return { generation: credential.generation, expiresAtMs: credential.expiresAtMs };
    });
  }

  /** Reconciles a host that just said Hello: its running agents, the ones it lost, and pending ones. */
  async onHostConnected(session: HostSession): Promise<void> {
    const { store, clock } = this.#options;
    const hello: Hello = session.hello;
    const epoch = await store.epoch();
    // Agents that ended while the stream was down: applied first, so they are not started again.
    for (const ended of hello.ended) await this.onAgentEvent(session, ended, true);
    const reported = new Set<string>();
    /** Rotations due now, handed to the scheduler together once every running agent is reconciled (see below). */
    const dueOnResume: { agentId: string; dueAtMs: number; expiresAtMs: number }[] = [];
    for (const running of hello.running) {
      reported.add(running.agentId);
      // The stream ended while its Hello was handled: what is left would go nowhere; its next Hello redoes it.
      if (session.state === 'closed') return;
      await this.#locks.run(running.agentId, async () => {
        const agent = await store.getAgent(running.agentId);
        if (agent?.hostId !== session.hostId || !ON_HOST_STATES.includes(agent.state)) {
          // A stale copy (the agent ended, or lives elsewhere now: moved while this host was lost) must not go on.
          // Not a protocol violation: the host could not know. Counted as one, a host back with more stale
          // copies than the violation budget had its stream ended before it was told to stop the rest.
          const why = agent === undefined ? 'no such agent' : agent.hostId === session.hostId ? `agent is ${agent.state}` : 'agent lives elsewhere now';
          this.#logger.info({ agentId: running.agentId, hostId: session.hostId, incarnation: running.incarnation, why }, 'host runs a stale copy; telling it to stop');
          let stale = this.#staleCopies.get(session);
          if (stale === undefined) this.#staleCopies.set(session, (stale = new Set()));
          stale.add(running.agentId);
          session.send({ stopAgent: { agentId: running.agentId, reason: why } });
          return;
        }
        if (running.incarnation !== agent.incarnation || running.epoch !== epoch) {
          // Not a violation: the agent was placed again while the host was away, or the store was
          // restored (a new epoch, in which the host's seqs and generations mean nothing). Start it
          // afresh: delivery resumes from what this store knows was taken, at least once and in order.
          this.#logger.info(
            { agentId: running.agentId, hostId: session.hostId, incarnation: running.incarnation, isNewEpoch: running.epoch !== epoch },
            'host runs an outdated placement; starting the agent again',
          );
          session.send({ stopAgent: { agentId: running.agentId, reason: 'superseded' } });
          const why = running.epoch === epoch ? `its host runs incarnation ${running.incarnation}, not ${agent.incarnation}` : 'the store was restored (new epoch)';
          await this.#startOn(agent, session, `started again: ${why}`, running.epoch === epoch ? 0 : running.incarnation);
          return;
        }
        let current = agent;
        if (agent.state === 'starting' || agent.state === 'lost') {
          const why = agent.state === 'lost' ? 'its lost host came back with it running (Hello)' : 'its host reported it running (Hello)';
          current = (await this.#setState(agent, 'running', '', why, { runningSinceMs: clock.now() })) ?? agent;
        }
        // What the host says its holder has is what it holds: a rotation sent into a stream that died
        // before the host read it is not counted (the comparison below sends a fresh one).
        if (running.generation !== current.ackedGeneration && running.generation <= current.generation) {
          current = (await this.#recordHeld(current, running.generation)) ?? current;
        }
        const nowMs = clock.now();
        const isBehind = running.generation < current.generation;
        if (isBehind || isRotationDue(nowMs, current.rotationDueAtMs) || isPastHalfLife(nowMs, current.issuedAtMs, current.expiresAtMs)) {
          // A host behind holds an older token than the store's: the one it acknowledged if that is
          // known, else one that had at most half its life left when the store's replaced it.
          const ttlMs = current.expiresAtMs - current.issuedAtMs;
          const heldExpiresAtMs = !isBehind
            ? current.expiresAtMs
            : current.ackedGeneration === running.generation && current.ackedExpiresAtMs > 0
              ? current.ackedExpiresAtMs
              : current.issuedAtMs + ttlMs / 2;
          // Delivery checks the half-life of the store's token, not of an older one the host holds: a
          // host behind whose token is past half its life gets the fresh one before any Deliver.
          const isHeldPastHalfLife = isBehind && isPastHalfLife(nowMs, heldExpiresAtMs - ttlMs, heldExpiresAtMs);
          if (this.#options.isRotationEnabled && !isHeldPastHalfLife) {
            // Due now, but signed by the rate-capped scheduler, soonest-expiring first, never inline: a
            // control plane coming back to every host at once would otherwise sign every due token of
            // every host inside their Hellos, all together.
            dueOnResume.push({ agentId: current.agentId, dueAtMs: nowMs, expiresAtMs: heldExpiresAtMs });
          } else {
            const credential = await this.#reissue(current, 'resume');
            if (credential !== undefined) session.send({ tokenRotated: { agentId: current.agentId, credential } });
          }
        } else if (this.#options.isRotationEnabled) {
          this.#scheduler.schedule(current.agentId, current.rotationDueAtMs, current.expiresAtMs);
        }
        await this.#options.delivery.attach(session, current.agentId, running.lastSeq);
      });
    }
    // All at once, in one turn: scheduled one by one as they were reconciled, the first would be
    // signed while the rest were still being read, whatever their expiry.
    for (const due of dueOnResume) this.#scheduler.schedule(due.agentId, due.dueAtMs, due.expiresAtMs, 'resume');
    // Agents this host was given but did not report: start them again, under a new incarnation.
    for (let afterId: string | null = null; ; ) {
      const page = await store.listAgents({ hostId: session.hostId, states: ON_HOST_STATES }, afterId, PAGE);
      for (const agent of page.items) {
        if (reported.has(agent.agentId)) continue;
        if (session.state === 'closed') return;
        await this.#locks.run(agent.agentId, async () => {
          const fresh = await store.getAgent(agent.agentId);
          if (fresh !== undefined && fresh.hostId === session.hostId && ON_HOST_STATES.includes(fresh.state)) {
            await this.#startOn(fresh, session, 'started again: its host reconnected without it');
          }
        });
      }
      afterId = page.nextAfterId;
      if (afterId === null) break;
    }
    await this.placePending();
  }

  /**
   * A host was declared lost. Each of its live agents becomes `lost` (a
   * transition with its reason). One that is rescheduled when lost
   * ({@link isRescheduledWhenLost}) is then fenced on the store at once (taken
   * off its host, so every credential of its old incarnation is refused from
   * this commit on) and placed again only once the last token that
   * incarnation held has expired, plus the clock tolerance: audience tokens
   * never outlive the agent token they were minted with, and no verifier
   * outside this control plane can be told of a revocation. The others wait,
   * `lost`, for their host to come back.
   */
  async onHostLost(hostId: string, silentForMs: number): Promise<number> {
    const { store, clock, sessions } = this.#options;
    const reason = `its host ${hostId} was lost (no contact for ${silentForMs} ms)`;
    let lost = 0;
    for (let afterId: string | null = null; ; ) {
      const page = await store.listAgents({ hostId, states: LIVE_AGENT_STATES }, afterId, PAGE);
      for (const listed of page.items) {
        await this.#locks.run(listed.agentId, async () => {
          // Back meanwhile: its Hello reconciles the agent.
          if (sessions.get(hostId) !== undefined) return;
          const agent = await store.getAgent(listed.agentId);
          if (agent?.hostId !== hostId || !LIVE_AGENT_STATES.includes(agent.state)) return;
          const marked = await store.updateAgent(
            agent.agentId,
            { state: 'lost', detail: reason, updatedAtMs: clock.now() },
            { incarnation: agent.incarnation, states: [agent.state] },
            reason,
          );
          if (marked === undefined) return;
          lost++;
          this.#forgetPlacement(agent.agentId);
          this.#onStateChanged(agent, 'lost', reason);
          if (!isRescheduledWhenLost(marked)) return;
          const placeAfterMs = marked.expiresAtMs + this.#options.clockToleranceMs;
          const fenceReason = `old incarnation ${marked.incarnation} fenced (every credential of it refused); placed again once its last token has expired, at ${new Date(placeAfterMs).toISOString()}`;
          const fenced = await store.updateAgent(
            agent.agentId,
            { hostId: null, detail: fenceReason, updatedAtMs: clock.now() },
            { incarnation: marked.incarnation, states: ['lost'] },
            fenceReason,
          );
          if (fenced === undefined) return;
          // Tokens of the old incarnation are refused from this commit on (isAgentTokenRevoked); drop cached ones.
          this.#options.verifier.forgetSubject('agent', agent.agentId);
          this.#logger.warn({ agentId: agent.agentId, hostId, incarnation: marked.incarnation, placeAfterMs }, 'agent of a lost host fenced');
          this.#awaitFenceExpiry(fenced);
        });
      }
      afterId = page.nextAfterId;
      if (afterId === null) break;
    }
    this.#logger.warn({ hostId, lost }, 'agents of a lost host marked lost');
    return lost;
  }

  /** Waits (on the clock) for a fenced agent's last token to expire, then makes it pending and places it. */
  #awaitFenceExpiry(agent: AgentRecord): void {
    if (this.#fenceWaits.has(agent.agentId) || this.#isClosed) return;
    const wait = (async () => {
      const { clock, store } = this.#options;
      const placeAfterMs = agent.expiresAtMs + this.#options.clockToleranceMs;
      // Strictly past: a token is accepted up to and including exp + tolerance.
      while (clock.now() <= placeAfterMs && !this.#closing.signal.aborted) await clock.sleep(placeAfterMs + 1 - clock.now(), this.#closing.signal);
      if (this.#closing.signal.aborted) return;
      await this.#locks.run(agent.agentId, async () => {
        const reason = `the last token of incarnation ${agent.incarnation} expired; placing it again`;
        const pending = await store.updateAgent(
          agent.agentId,
          { state: 'pending', hostId: agent.requestedHostId, detail: reason, updatedAtMs: clock.now() },
          { incarnation: agent.incarnation, states: ['lost'] },
          reason,
        );
        if (pending === undefined) return;
        this.#onStateChanged(agent, 'pending', reason);
        await this.#place(agent.agentId);
      });
    })()
      .catch((err: unknown) => this.#logger.error({ err, agentId: agent.agentId }, 'placing a fenced agent again failed'))
      .finally(() => this.#fenceWaits.delete(agent.agentId));
    this.#fenceWaits.set(agent.agentId, wait);
  }

  /**
   * Moves every live agent off a (revoked) host: back to pending with its
   * tokens revoked at once, then placed on another host if one fits. The old
   * copies can no longer act: their incarnation is fenced when they start again.
   */
  async evacuateHost(hostId: string): Promise<number> {
    let moved = 0;
    for (let afterId: string | null = null; ; ) {
      const page = await this.#options.store.listAgents({ hostId, states: LIVE_AGENT_STATES }, afterId, PAGE);
      for (const agent of page.items) {
        await this.#locks.run(agent.agentId, async () => {
          const updated = await this.#options.store.updateAgent(
            agent.agentId,
            { state: 'pending', hostId: null, incarnation: agent.incarnation + 1, updatedAtMs: this.#options.clock.now(), detail: `host ${hostId} revoked` },
            { states: LIVE_AGENT_STATES, incarnation: agent.incarnation },
          );
          if (updated === undefined) return;
          this.#forgetPlacement(agent.agentId);
          this.#noteState(agent.agentId, 'pending');
          this.#options.events.emit('agent-state', { agentId: agent.agentId, state: 'pending', incarnation: updated.incarnation, hostId, detail: `host ${hostId} revoked` });
          moved++;
        });
      }
      afterId = page.nextAfterId;
      if (afterId === null) break;
    }
    this.#logger.warn({ hostId, moved }, 'agents moved off a revoked host');
    await this.placePending();
    return moved;
  }

  /**
   * Tries to place every pending agent on a connected host. Each placement
   * costs a fixed number of store calls, whatever the number of agents (host
   * loads are kept by the store, never counted), and the event loop gets a
   * turn between placements, so a long backlog never starves keepalives or
   * other streams.
   */
  async placePending(): Promise<void> {
    for (let afterId: string | null = null; ; ) {
      // With no host connected nothing can be placed (a control plane starting with a backlog).
      if (this.#options.sessions.size === 0) return;
      const page = await this.#options.store.listAgents({ states: ['pending'] }, afterId, PAGE);
      for (const agent of page.items) {
        await this.#locks.run(agent.agentId, () => this.#place(agent.agentId));
        await nextTurn();
      }
      afterId = page.nextAfterId;
      if (afterId === null) break;
    }
  }


  /**
   * Applies an AgentEvent from a host. One from a Hello's `ended` (`isFromHello`)
   * may repeat an event the host already sent live: of an agent that has moved
   * on since (a hand-over), it is dropped without a Reject.
   */
  async onAgentEvent(session: HostSession, event: AgentEvent, isFromHello = false): Promise<void> {
    await this.#locks.run(event.agentId, async () => {
      const agent = await this.#options.store.getAgent(event.agentId);
      if (agent?.hostId !== session.hostId) {
        // The end of a stale copy this host was told to stop at Hello says nothing about the agent, which
        // lives elsewhere now; nor is it a protocol violation.
        const isEnd = (ENDED_AGENT_STATES as readonly string[]).includes(event.state);
        if (isEnd && this.#staleCopies.get(session)?.delete(event.agentId) === true) {
          this.#logger.debug({ agentId: event.agentId, hostId: session.hostId, state: event.state, incarnation: event.incarnation }, 'a stale copy ended');
          return;
        }
        if (isFromHello && agent !== undefined) return;
        this.#options.reject(session, 'agent_event', event.agentId, 'agent not assigned to this host');
        return;
      }
      if (event.incarnation !== 0 && event.incarnation !== agent.incarnation) return;
      switch (event.state) {
        case 'started': {
          // The host holds the StartAgent credential: the current one unless a rotation was issued since
          // (previousExpiresAtMs is only set by a rotation within this placement), whose Ack follows.
          const isRotatedSince = agent.previousExpiresAtMs !== 0;
          const held = isRotatedSince ? agent.generation - 1 : agent.generation;
          const isNowRunning = agent.state === 'starting' || agent.state === 'stalled';
          if (held <= agent.ackedGeneration && !isNowRunning) return;
          // One write for both: a host starting many agents sends as many events, handled one after another.
          const updated = await this.#options.store.updateAgent(
            agent.agentId,
            {
              ...(held > agent.ackedGeneration ? this.#heldPatch(agent, held) : {}),
              ...(isNowRunning ? { state: 'running' as const, detail: event.detail, updatedAtMs: this.#options.clock.now() } : {}),
              // A stalled agent answering again was running all along: its healthy period goes on.
              ...(agent.state === 'starting' ? { runningSinceMs: this.#options.clock.now() } : {}),
            },
            { incarnation: agent.incarnation, generation: agent.generation, states: [agent.state] },
            'its host reported it started',
          );
          if (updated !== undefined && isNowRunning) this.#onStateChanged(agent, 'running', agent.state === 'stalled' ? 'its host reported it running again' : 'its host reported it started');
          return;
        }
        case 'stalled':
          // A signal, not a kill: it keeps its place, tokens and mail; only an operator or its end moves it.
          if (agent.state === 'running') await this.#setState(agent, 'stalled', event.detail, `its host reported it stalled: ${event.detail}`);
          return;
        case 'running':
          if (agent.state === 'stalled') await this.#setState(agent, 'running', '', `its host reported it ${event.detail === '' ? 'running again' : event.detail}`);
          return;
        case 'exited':
        case 'failed':
          if (LIVE_AGENT_STATES.includes(agent.state)) await this.#endByItself(agent, event.state, event.detail);
          return;
        case 'stopped':
          if (event.takenSeq !== undefined && LIVE_AGENT_STATES.includes(agent.state) && event.incarnation === agent.incarnation) {
            // A hand-over its host confirmed (a drain): acks made durable, fenced, started on its target.
            await this.#moves.onHandedOver(session, agent, event);
            return;
          }
          // The stop itself was recorded when it was asked for; what the host adds is how it ended. An
          // agent that would not let go by the stop deadline was abandoned (fenced, its process group
          // killed): the operator should know, as its last message may have been left half done.
          if (event.detail === 'abandoned' && agent.state === 'stopped' && !agent.detail.endsWith(ABANDONED_SUFFIX)) {
            this.#logger.warn({ agentId: agent.agentId, hostId: session.hostId }, 'agent abandoned by its host at the stop deadline');
            await this.#options.store.updateAgent(
              agent.agentId,
              { detail: `${agent.detail}${ABANDONED_SUFFIX}`, updatedAtMs: this.#options.clock.now() },
              { incarnation: agent.incarnation, states: ['stopped'] },
            );
          }
          return;
        default:
          this.#options.reject(session, 'agent_event', event.agentId, `unknown state ${event.state}`);
      }
    });
  }

  /**
   * Records a host's Ack of an agent credential (TokenRotated): the generation
   * it now holds, with that generation's expiry. Returns false when the agent is
   * not this host's (a violation the caller answers). A refused credential, one
   * of an older placement, or one older than what is recorded changes nothing.
   */
  async onCredentialAck(hostId: string, agentId: string, incarnation: number, generation: number, isOk: boolean): Promise<boolean> {
    return this.#locks.run(agentId, async () => {
      const agent = await this.#options.store.getAgentCredentialState(agentId);
      if (agent?.hostId !== hostId) return false;
      if (!isOk || (incarnation !== 0 && incarnation !== agent.incarnation)) return true;
      if (generation > agent.ackedGeneration && generation <= agent.generation) {
        const patch = this.#heldPatch(agent, generation);
        const isWritten = await this.#options.store.patchAgent(agentId, patch, { incarnation: agent.incarnation, generation: agent.generation });
        if (isWritten) this.#logger.debug({ agentId, gen: generation, exp: patch.ackedExpiresAtMs }, 'agent credential held by its host');
      }
      return true;
    });
  }

  /** Records that `agent`'s host holds `generation` (this placement's); caller holds the lock. */
  async #recordHeld(agent: AgentRecord, generation: number): Promise<AgentRecord | undefined> {
    const patch = this.#heldPatch(agent, generation);
    const updated = await this.#options.store.updateAgent(agent.agentId, patch, { incarnation: agent.incarnation, generation: agent.generation });
    if (updated !== undefined) this.#logger.debug({ agentId: agent.agentId, gen: generation, exp: patch.ackedExpiresAtMs }, 'agent credential held by its host');
    return updated;
  }

  /** The fields recording that `agent`'s host holds credential `generation` (the current one, or the one it replaced). */
  #heldPatch(agent: AgentCredentialState, generation: number): { ackedGeneration: number; ackedExpiresAtMs: number } {
    const expiresAtMs = generation === agent.generation ? agent.expiresAtMs : generation === agent.generation - 1 ? agent.previousExpiresAtMs : 0;
    return { ackedGeneration: generation, ackedExpiresAtMs: expiresAtMs };
  }

  async #requireHost(hostId: string, spec: AgentSpecRecord): Promise<void> {
    const host = await this.#options.store.getHost(hostId);
    if (host === undefined) throw new NotFoundError(`no host ${hostId}`);
    if (host.state === 'revoked') throw new FailedPreconditionError(`host ${hostId} is revoked`);
    const session = this.#options.sessions.get(hostId);
    if (session !== undefined) {
      const unsupported = unsupportedReason(session.hello, spec);
      if (unsupported !== undefined) throw new FailedPreconditionError(`host ${hostId}: ${unsupported}`);
    }
  }

  /**
   * Places a pending agent on a host if one fits; caller holds the agent's lock.
   * The store has the last word on capacity: a host another placement filled
   * since the choice (here or in another control plane) is left out and the
   * next best one tried, at most once per connected host. An agent left pending
   * shows why in its detail (written only when the reason changed).
   */
  async #place(agentId: string): Promise<AgentRecord> {
    const agent = await this.get(agentId);
    if (agent.state !== 'pending') return agent;
    // Waiting out its restart backoff: the wait armed for it sweeps again when the time comes.
    if (agent.restartAtMs > this.#options.clock.now()) return agent;
    const tried = new Set<string>();
    for (;;) {
      const choice = await this.#chooseHost(agent, tried);
      if (choice.session === undefined) {
        if (agent.detail === choice.reason) return agent;
        const noted = await this.#options.store.updateAgent(
          agentId,
          { detail: choice.reason, updatedAtMs: this.#options.clock.now() },
          { incarnation: agent.incarnation, states: ['pending'] },
        );
        return noted ?? this.get(agentId);
      }
      const result = await this.#startOn(agent, choice.session, choice.reason);
      if (result.outcome === 'placed') return result.agent;
      if (result.outcome === 'agent-changed') return this.get(agentId);
      tried.add(choice.session.hostId);
    }
  }

  /**
   * The open session to place `agent` on (see {@link decidePlacement}), leaving
   * out hosts in `tried`; or, with none, why. Any host that is not in an open
   * session counts as not connected.
   */
  async #chooseHost(agent: AgentRecord, tried: ReadonlySet<string>): Promise<{ session: HostSession | undefined; reason: string }> {
    const constraint = { hostId: agent.hostId, labels: agent.hostLabels };
    const open = this.#options.sessions
      .all()
      .filter((s) => s.state === 'open' && !tried.has(s.hostId) && (agent.hostId === null || s.hostId === agent.hostId));
    const decision = decidePlacement(await this.#candidates(open, agent.spec), constraint);
    if (decision.outcome === 'placed') return { session: open.find((s) => s.hostId === decision.hostId), reason: decision.reason };
    if (tried.size === 0) return { session: undefined, reason: decision.reason };
    // Hosts tried already were filled (or cordoned) by the time the store checked: the reason is
    // what every open host looks like now, not what is left once those are set aside.
    const all = this.#options.sessions.all().filter((s) => s.state === 'open' && (agent.hostId === null || s.hostId === agent.hostId));
    return { session: undefined, reason: decidePlacement(await this.#candidates(all, agent.spec), constraint).reason };
  }

  /** What placement needs of each of `open` for an agent of `spec` (loads as the store keeps them). */
  async #candidates(open: readonly HostSession[], spec: AgentSpecRecord): Promise<PlacementCandidate[]> {
    const loads = open.length === 0 ? new Map<string, HostLoad>() : await this.#options.store.getHostLoads(open.map((s) => s.hostId));
    return open.map((s): PlacementCandidate => {
      const host = loads.get(s.hostId);
      return {
        hostId: s.hostId,
        labels: s.hello.labels,
        capacity: host?.capacity ?? 0,
        load: host?.load ?? 0,
        isConnected: host !== undefined && host.state !== 'revoked',
        isSchedulable: host?.isSchedulable ?? false,
        unsupportedReason: unsupportedReason(s.hello, spec),
      };
    });
  }

  /**
   * Starts `agent` on `session` under a new incarnation, fencing any older one;
   * caller holds the lock. Refused by the store when the host is full (unless
   * the agent already counts there), revoked, or the agent changed meanwhile.
   */
  async #startOn(agent: AgentRecord, session: HostSession, reason: string, outdatedIncarnation = 0): Promise<PlaceAgentResult> {
    // Past the one the host still runs, too: after a restore, the host's may be ahead of the store's
    // (a host's claim only moves its own agent's number, and only within reason).
    const claimed = Number.isSafeInteger(outdatedIncarnation) && outdatedIncarnation < 2 ** 48 ? outdatedIncarnation : 0;
    const incarnation = Math.max(agent.incarnation, claimed) + 1;
    // Every start after the first is a restart, whatever moved it (its own end, a host, a new spec).
    const restarts = agent.incarnation > 0 ? agent.restarts + 1 : agent.restarts;
    const issued = await this.#issue(agent, { hostId: session.hostId, incarnation, state: 'starting', restarts, reason }, 'start');
    if (issued.outcome !== 'placed') return issued;
    this.#options.heartbeats.forget(agent.agentId);
    // Tokens of the old incarnation are refused from now on (isAgentTokenRevoked); drop cached ones.
    this.#options.verifier.forgetSubject('agent', agent.agentId);
    session.send({
      startAgent: {
        agentId: agent.agentId,
        incarnation,
        spec: agent.spec,
        credential: issued.credential,
        name: agent.name,
        ackedSeq: agent.ackedSeq,
      },
    });
    this.#noteState(agent.agentId, 'starting');
    this.#options.events.emit('agent-state', { agentId: agent.agentId, state: 'starting', incarnation, hostId: session.hostId, detail: reason });
    this.#logger.info({ agentId: agent.agentId, hostId: session.hostId, incarnation }, 'agent started on host');
    await this.#options.delivery.attach(session, agent.agentId, issued.agent.ackedSeq);
    return { outcome: 'placed', agent: issued.agent };
  }

  /**
   * Places `agent` on `placement.hostId`: signs its first credential of the
   * placement and records both (compare-and-set on its generation and
   * incarnation), the store checking the host's capacity. Rotations within a
   * placement go through {@link #reissue}.
   */
  async #issue(
    agent: AgentRecord,
    placement: { hostId: string; incarnation: number; state: AgentStateName; restarts?: number; reason?: string },
    why: string,
  ): Promise<{ outcome: 'placed'; agent: AgentRecord; credential: Credential } | Exclude<PlaceAgentResult, { outcome: 'placed' }>> {
    const { issuer, store, clock, events } = this.#options;
    const { hostId, incarnation } = placement;
    const generation = agent.generation + 1;
    const issued = await issuer.issue({ kind: 'agent', subject: agent.agentId, ttlMs: this.#options.agentTokenTtlMs, generation, hostId, incarnation });
    const { claims } = issued;
    const dueAtMs = rotationDueAtMs(claims.issuedAtMs, claims.expiresAtMs, this.#options.random());
    const patch = {
      hostId,
      incarnation,
      generation,
      tokenId: claims.tokenId,
      issuedAtMs: claims.issuedAtMs,
      expiresAtMs: claims.expiresAtMs,
      rotationDueAtMs: dueAtMs,
      updatedAtMs: clock.now(),
      // A new placement starts from nothing held.
      previousExpiresAtMs: 0,
      ackedGeneration: 0,
      ackedExpiresAtMs: 0,
      restartAtMs: 0,
      runningSinceMs: 0,
      state: placement.state,
      ...(placement.restarts === undefined ? {} : { restarts: placement.restarts }),
    };
    const expect = { generation: agent.generation, incarnation: agent.incarnation };
    const placed = await store.placeAgent(agent.agentId, patch, expect, placement.reason);
    if (placed.outcome !== 'placed') {
      this.#logger.debug({ agentId: agent.agentId, hostId, outcome: placed.outcome }, 'placement refused by the store');
      return placed;
    }
    const updated = placed.agent;
    if (this.#options.isRotationEnabled) this.#scheduler.schedule(agent.agentId, dueAtMs, claims.expiresAtMs);
    this.#logger.debug({ agentId: agent.agentId, why, ...logFields(claims) }, 'agent credential issued');
    events.emit('credential-issued', { agentId: agent.agentId, hostId, incarnation, generation, tokenId: claims.tokenId, expiresAtMs: claims.expiresAtMs, rotationDueAtMs: dueAtMs, reason: 'placed' });
    return { outcome: 'placed', agent: updated, credential: toCredential(issued) };
  }

  /**
   * Signs the next credential of a placed agent (a rotation within its
   * placement) and records it, compare-and-set on its generation and
   * incarnation, without reading the agent back. Undefined when the agent
   * changed meanwhile. Caller holds the lock.
   */
  async #reissue(agent: AgentCredentialState, why: RotationReason): Promise<Credential | undefined> {
    const { issuer, store, clock, events } = this.#options;
    const hostId = agent.hostId;
    if (hostId === null) return undefined;
    const generation = agent.generation + 1;
    const incarnation = agent.incarnation;
    const issued = await issuer.issue({ kind: 'agent', subject: agent.agentId, ttlMs: this.#options.agentTokenTtlMs, generation, hostId, incarnation });
    const { claims } = issued;
    const dueAtMs = rotationDueAtMs(claims.issuedAtMs, claims.expiresAtMs, this.#options.random());
    const isWritten = await store.patchAgent(
      agent.agentId,
      {
        generation,
        tokenId: claims.tokenId,
        issuedAtMs: claims.issuedAtMs,
        expiresAtMs: claims.expiresAtMs,
        rotationDueAtMs: dueAtMs,
        updatedAtMs: clock.now(),
        // The replaced credential's expiry, so an Ack of it that arrives after this one was issued still records the right expiry.
        previousExpiresAtMs: agent.expiresAtMs,
      },
      { generation: agent.generation, incarnation },
    );
    if (!isWritten) return undefined;
    if (this.#options.isRotationEnabled) this.#scheduler.schedule(agent.agentId, dueAtMs, claims.expiresAtMs);
    this.#logger.debug({ agentId: agent.agentId, why, ...logFields(claims) }, 'agent credential issued');
    events.emit('credential-issued', { agentId: agent.agentId, hostId, incarnation, generation, tokenId: claims.tokenId, expiresAtMs: claims.expiresAtMs, rotationDueAtMs: dueAtMs, reason: why });
    return toCredential(issued);
  }

  async #setState(agent: AgentRecord, state: AgentStateName, detail: string, reason: string, extra: AgentPatch = {}): Promise<AgentRecord | undefined> {
    const updated = await this.#options.store.updateAgent(
      agent.agentId,
      { ...extra, state, detail, updatedAtMs: this.#options.clock.now() },
      { incarnation: agent.incarnation, states: [agent.state] },
      reason,
    );
    if (updated !== undefined) this.#onStateChanged(agent, state, reason);
    return updated;
  }

  #onStateChanged(agent: AgentRecord, state: AgentStateName, detail: string): void {
    this.#noteState(agent.agentId, state);
    this.#options.events.emit('agent-state', { agentId: agent.agentId, state, incarnation: agent.incarnation, hostId: agent.hostId, detail });
    this.#logger.info({ agentId: agent.agentId, state }, 'agent state');
  }

  /**
   * An agent ended by itself (its host reported it exited or failed, or it
   * completed): ended, or, if its restart policy says so and its budget is not
   * spent, back to pending with its tokens revoked, to be placed again at its
   * restart time (persisted, so a restarted control plane keeps it). A spent
   * budget ends it `failed` as a crash loop. Only the agent as read; caller
   * holds the lock.
   */
  async #endByItself(agent: AgentRecord, state: 'exited' | 'failed', detail: string): Promise<AgentRecord | undefined> {
    const nowMs = this.#options.clock.now();
    const budget = this.#restartBudget;
    const policy = agent.restartPolicy;
    const decision = decideRestart({ policy, state, failures: agent.failures, runningSinceMs: agent.runningSinceMs, nowMs }, budget);
    if (decision.action === 'end') return this.#end(agent, state, detail, { failures: decision.failures });
    if (decision.action === 'give-up') {
      const loop = `crash loop: ended ${decision.failures} times in a row without ${budget.healthyAfterMs} ms running (restart policy ${policy}); last ${state}: ${detail}`;
      this.#logger.warn({ agentId: agent.agentId, failures: decision.failures, policy }, 'agent in a crash loop: not restarted again');
      return this.#end(agent, 'failed', loop, { failures: decision.failures });
    }
    const reason = `${state}: ${detail}; restart ${decision.failures} of at most ${budget.maxFailures - 1} in ${decision.delayMs} ms (restart policy ${policy})`;
    const updated = await this.#options.store.updateAgent(
      agent.agentId,
      {
        state: 'pending',
        // Placed again as it was asked for: on the host it named, or by its labels.
        hostId: agent.requestedHostId,
        detail: reason,
        updatedAtMs: nowMs,
        failures: decision.failures,
        restartAtMs: decision.restartAtMs,
        runningSinceMs: 0,
        ...(state === 'failed' ? { lastError: detail, lastErrorAtMs: nowMs } : {}),
      },
      { incarnation: agent.incarnation, states: [agent.state] },
      reason,
    );
    if (updated === undefined) return undefined;
    // Its tokens are refused from here (pending is not live); its next start is a new incarnation.
    this.#noteState(agent.agentId, 'pending');
    this.#forgetPlacement(agent.agentId);
    this.#options.events.emit('agent-state', { agentId: agent.agentId, state: 'pending', incarnation: agent.incarnation, hostId: agent.hostId, detail: reason, endedAs: state });
    this.#logger.info({ agentId: agent.agentId, state, failures: decision.failures, delayMs: decision.delayMs, policy }, 'agent ended; restart scheduled');
    this.#scheduleRestart(agent.agentId, decision.restartAtMs);
    // Its place on its host is free.
    this.requestPlacement();
    return updated;
  }

  /**
   * Ends an agent: state, its tokens revoked at once, no more rotations; a
   * failure is kept as its last error. Only the agent as read (same incarnation
   * and state): undefined, and nothing done, when it changed since (another
   * writer on the store moved or ended it). Its place on its host is free
   * again, so pending agents are placed (after the caller's lock is released).
   */
  async #end(agent: AgentRecord, state: AgentStateName, detail: string, extra: AgentPatch = {}): Promise<AgentRecord | undefined> {
    const nowMs = this.#options.clock.now();
    const updated = await this.#options.store.updateAgent(
      agent.agentId,
      { ...extra, state, detail, updatedAtMs: nowMs, restartAtMs: 0, runningSinceMs: 0, ...(state === 'failed' ? { lastError: detail, lastErrorAtMs: nowMs } : {}) },
      { incarnation: agent.incarnation, states: [agent.state] },
    );
    if (updated === undefined) return undefined;
    this.#cancelRestart(agent.agentId);
    this.#noteState(agent.agentId, state);
    this.#forgetPlacement(agent.agentId);
    this.#options.events.emit('agent-state', { agentId: agent.agentId, state, incarnation: agent.incarnation, hostId: agent.hostId, detail });
    this.#logger.info({ agentId: agent.agentId, state, detail }, 'agent ended');
    if (LIVE_AGENT_STATES.includes(agent.state)) this.requestPlacement();
    return updated;
  }
}

function validateSpec(spec: AgentSpecRecord): void {
  const audienceFiles = spec.audienceFiles?.files ?? [];
  if (audienceFiles.length > 0 && spec.kind !== 'process') throw new InvalidArgumentError('audience files are for process agents only');
  validateAudienceFiles(audienceFiles);
  const deadlineMs = spec.handlerDeadlineMs;
  const { minMs, maxMs } = HANDLER_DEADLINE_BOUNDS;
  if (deadlineMs !== undefined && (!Number.isSafeInteger(deadlineMs) || deadlineMs < minMs || deadlineMs > maxMs)) {
    throw new InvalidArgumentError(`spec.handler_deadline_ms must be from ${minMs} (none) to ${maxMs} (7 days), got ${String(deadlineMs)}`);
  }
  if (spec.kind === 'module') {
    if (spec.module === '') throw new InvalidArgumentError('a module agent needs spec.module');
  } else if (spec.kind === 'process') {
    if (spec.command === '') throw new InvalidArgumentError('a process agent needs spec.command');
  } else {
    throw new InvalidArgumentError('spec.kind must be "module" or "process"');
  }
}

/** Why `hello`'s host cannot run `spec`, or undefined if it can. */
function unsupportedReason(hello: Hello, spec: AgentSpecRecord): string | undefined {
  if (spec.kind === 'module' && !hello.modules.includes(spec.module)) return `module ${spec.module} is not registered on the host`;
  if (spec.kind === 'process' && !hello.allowedCommands.includes(spec.command)) return `command ${spec.command} is not allowed on the host`;
  return undefined;
}
