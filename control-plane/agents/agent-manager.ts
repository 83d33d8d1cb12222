import { randomBytes } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { Credential } from '../../gen/tether/v1/common.js';
import type { AgentEvent, Hello } from '../../gen/tether/v1/host.js';
import type { ControlPlaneEvents } from '../events.js';
import type { HostSession, HostSessions } from '../hosts/host-session.js';
import { isPastHalfLife, isRotationDue, rotationDueAtMs } from '../rotation/rotation-policy.js';
import { RotationScheduler } from '../rotation/rotation-scheduler.js';
import {
  LIVE_AGENT_STATES,
  type AgentRecord,
  type AgentSpecRecord,
  type AgentStateName,
  type LabelRecord,
  type Store,
} from '../store/store.js';
import type { TokenIssuer } from '../tokens/token-issuer.js';
import type { IssuedToken, TokenClaims } from '../tokens/token-kinds.js';
import type { TokenVerifier } from '../tokens/token-verifier.js';
import type { DeliveryManager } from '../delivery/delivery-manager.js';
import { KeyedMutex } from './keyed-mutex.js';

const AGENT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const ENDED_STATES: readonly AgentStateName[] = ['stopped', 'exited', 'failed'];
const PAGE = 500;

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
  /** When false, credentials are issued once and never replaced (to show what goes wrong). */
  isRotationEnabled: boolean;
  maxRotationsPerSecond: number;
  /** Uniform in [0, 1); the rotation jitter. */
  random: () => number;
  /** Reports an envelope-level violation by a host (answered with Reject). */
  reject: (session: HostSession, what: string, agentId: string, reason: string) => void;
  delivery: DeliveryManager;
}

/** What to create. */
export interface DispatchRequest {
  agentId: string;
  name: string;
  spec: AgentSpecRecord;
  hostId: string;
  hostLabels: LabelRecord[];
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

  constructor(options: AgentManagerOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'agents' });
    this.#scheduler = new RotationScheduler({
      clock: options.clock,
      logger: options.logger.child({ component: 'rotation' }),
      maxPerSecond: options.maxRotationsPerSecond,
      rotate: async (agentId) => {
        await this.rotate(agentId, 'due');
      },
    });
  }

  /** Starts the rotation scheduler. */
  start(): void {
    if (this.#options.isRotationEnabled) this.#scheduler.start();
  }

  /** True when every rotation that time has made due is done (for tests on a fake clock). */
  isSettled(): boolean {
    return this.#scheduler.isSettled() && this.#locks.size === 0;
  }

  /** Stops the scheduler. */
  async close(): Promise<void> {
    await this.#scheduler.close();
  }

  /**
   * Queues the rotation of `agentId` at `dueAtMs` on the rate-capped scheduler
   * (soonest-expiring first among those due); replaces any rotation it had queued.
   * For credentials that must be replaced early (their signing key was revoked).
   */
  scheduleRotation(agentId: string, dueAtMs: number, expiresAtMs: number): void {
    this.#scheduler.schedule(agentId, dueAtMs, expiresAtMs);
  }

  /** Whether a verified agent token has been revoked since it was issued. */
  async isAgentTokenRevoked(claims: TokenClaims): Promise<boolean> {
    const agent = await this.#options.store.getAgent(claims.subject);
    if (agent === undefined) return true;
    if (!LIVE_AGENT_STATES.includes(agent.state) && agent.state !== 'lost') return true;
    return agent.incarnation !== claims.incarnation || agent.hostId !== claims.hostId || claims.generation > agent.generation;
  }

  /** Creates an agent and places it. */
  async dispatch(request: DispatchRequest): Promise<AgentRecord> {
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
      createdAtMs: nowMs,
      updatedAtMs: nowMs,
      detail: '',
      lastSeq: 0,
      ackedSeq: 0,
    });
    this.#logger.info({ agentId, kind: request.spec.kind }, 'agent dispatched');
    return this.#locks.run(agentId, () => this.#place(agentId));
  }

  /** Creates the agent if missing, starts it again if it ended; returns it and whether it was (re)started. */
  async ensure(request: DispatchRequest): Promise<{ agent: AgentRecord; isCreated: boolean }> {
    if (request.agentId === '') throw new InvalidArgumentError('agent_id is required');
    const existing = await this.#options.store.getAgent(request.agentId);
    if (existing === undefined) {
      try {
        return { agent: await this.dispatch(request), isCreated: true };
      } catch (err) {
        const raced = await this.#options.store.getAgent(request.agentId);
        if (raced === undefined) throw err;
        return { agent: raced, isCreated: false };
      }
    }
    if (!ENDED_STATES.includes(existing.state)) return { agent: existing, isCreated: false };
    validateSpec(request.spec);
    return this.#locks.run(request.agentId, async () => {
      const updated = await this.#options.store.updateAgent(
        request.agentId,
        {
          state: 'pending',
          spec: request.spec,
          hostId: request.hostId === '' ? null : request.hostId,
          hostLabels: request.hostLabels,
          updatedAtMs: this.#options.clock.now(),
          detail: '',
        },
        { states: ENDED_STATES },
      );
      if (updated === undefined) return { agent: await this.get(request.agentId), isCreated: false };
      return { agent: await this.#place(request.agentId), isCreated: true };
    });
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
      const agent = await this.get(agentId);
      if (agent.state === 'stopped') return agent;
      const stopped = await this.#end(agent, 'stopped', reason === '' ? 'stopped by operator' : reason);
      const session = agent.hostId === null ? undefined : this.#options.sessions.get(agent.hostId);
      session?.send({ stopAgent: { agentId, reason: stopped.detail } });
      return stopped;
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
      await this.#end(agent, 'exited', detail === '' ? 'completed' : detail);
      const session = agent.hostId === null ? undefined : this.#options.sessions.get(agent.hostId);
      session?.send({ stopAgent: { agentId, reason: 'completed' } });
    });
  }

  /** Issues a fresh credential to a live agent and pushes it to its host. */
  async rotate(agentId: string, why: 'due' | 'forced' | 'resume' | 'deliver'): Promise<AgentRecord | undefined> {
    return this.#locks.run(agentId, async () => {
      const agent = await this.#options.store.getAgent(agentId);
      if (agent === undefined) {
        if (why === 'forced') throw new NotFoundError(`no agent ${agentId}`);
        return undefined;
      }
      if (!LIVE_AGENT_STATES.includes(agent.state) || agent.hostId === null) {
        this.#scheduler.unschedule(agentId);
        if (why === 'forced') throw new FailedPreconditionError(`agent ${agentId} is ${agent.state}`);
        return undefined;
      }
      const session = this.#options.sessions.get(agent.hostId);
      if (session === undefined) {
        // Nothing to push it down; the host's next Hello gets a fresh one if it is due.
        this.#scheduler.unschedule(agentId);
        if (why === 'forced') throw new FailedPreconditionError(`host ${agent.hostId} of agent ${agentId} is not connected`);
        return undefined;
      }
      const issued = await this.#issue(agent, {}, why);
      if (issued === undefined) return undefined;
      session.send({ tokenRotated: { agentId, credential: issued.credential } });
      return issued.agent;
    });
  }

  /** Reconciles a host that just said Hello: its running agents, the ones it lost, and pending ones. */
  async onHostConnected(session: HostSession): Promise<void> {
    const { store, clock } = this.#options;
    const hello: Hello = session.hello;
    const epoch = await store.epoch();
    // Agents that ended while the stream was down: applied first, so they are not started again.
    for (const ended of hello.ended) await this.onAgentEvent(session, ended);
    const reported = new Set<string>();
    for (const running of hello.running) {
      reported.add(running.agentId);
      await this.#locks.run(running.agentId, async () => {
        const agent = await store.getAgent(running.agentId);
        if (agent?.hostId !== session.hostId || !LIVE_AGENT_STATES.includes(agent.state)) {
          this.#options.reject(session, 'hello', running.agentId, 'agent not assigned to this host');
          if (agent?.hostId === session.hostId) session.send({ stopAgent: { agentId: running.agentId, reason: `agent is ${agent.state}` } });
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
          await this.#startOn(agent, session, running.epoch === epoch ? 0 : running.incarnation);
          return;
        }
        let current = agent;
        if (agent.state === 'starting') {
          current = (await this.#setState(agent, 'running', '')) ?? agent;
        }
        const nowMs = clock.now();
        if (
          running.generation < current.generation ||
          isRotationDue(nowMs, current.rotationDueAtMs) ||
          isPastHalfLife(nowMs, current.issuedAtMs, current.expiresAtMs)
        ) {
          const issued = await this.#issue(current, {}, 'resume');
          if (issued !== undefined) session.send({ tokenRotated: { agentId: current.agentId, credential: issued.credential } });
        } else if (this.#options.isRotationEnabled) {
          this.#scheduler.schedule(current.agentId, current.rotationDueAtMs, current.expiresAtMs);
        }
        await this.#options.delivery.attach(session, current.agentId, running.lastSeq);
      });
    }
    // Agents this host was given but did not report: start them again, under a new incarnation.
    for (let afterId: string | null = null; ; ) {
      const page = await store.listAgents({ hostId: session.hostId, states: LIVE_AGENT_STATES }, afterId, PAGE);
      for (const agent of page.items) {
        if (reported.has(agent.agentId)) continue;
        await this.#locks.run(agent.agentId, async () => {
          const fresh = await store.getAgent(agent.agentId);
          if (fresh !== undefined && fresh.hostId === session.hostId && LIVE_AGENT_STATES.includes(fresh.state)) {
            await this.#startOn(fresh, session);
          }
        });
      }
      afterId = page.nextAfterId;
      if (afterId === null) break;
    }
    await this.placePending();
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
          this.#options.verifier.forgetSubject('agent', agent.agentId);
          this.#scheduler.unschedule(agent.agentId);
          this.#options.delivery.detach(agent.agentId);
          this.#options.events.emit('agent-state', { agentId: agent.agentId, state: 'pending', incarnation: updated.incarnation });
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

  /** Tries to place every pending agent on a connected host. */
  async placePending(): Promise<void> {
    for (let afterId: string | null = null; ; ) {
      const page = await this.#options.store.listAgents({ states: ['pending'] }, afterId, PAGE);
      for (const agent of page.items) await this.#locks.run(agent.agentId, () => this.#place(agent.agentId));
      afterId = page.nextAfterId;
      if (afterId === null) break;
    }
  }


  /** Applies an AgentEvent from a host. */
  async onAgentEvent(session: HostSession, event: AgentEvent): Promise<void> {
    await this.#locks.run(event.agentId, async () => {
      const agent = await this.#options.store.getAgent(event.agentId);
      if (agent?.hostId !== session.hostId) {
        this.#options.reject(session, 'agent_event', event.agentId, 'agent not assigned to this host');
        return;
      }
      if (event.incarnation !== 0 && event.incarnation !== agent.incarnation) return;
      switch (event.state) {
        case 'started':
          if (agent.state === 'starting' || agent.state === 'stalled') await this.#setState(agent, 'running', event.detail);
          return;
        case 'exited':
        case 'failed':
          if (LIVE_AGENT_STATES.includes(agent.state)) await this.#end(agent, event.state, event.detail);
          return;
        case 'stopped':
          return;
        default:
          this.#options.reject(session, 'agent_event', event.agentId, `unknown state ${event.state}`);
      }
    });
  }

  /** Checks that an Ack names an agent of this host. */
  async isAgentOfHost(hostId: string, agentId: string): Promise<boolean> {
    const agent = await this.#options.store.getAgent(agentId);
    return agent?.hostId === hostId;
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

  /** Places a pending agent on a host if one fits; caller holds the agent's lock. */
  async #place(agentId: string): Promise<AgentRecord> {
    const agent = await this.get(agentId);
    if (agent.state !== 'pending') return agent;
    const session = await this.#chooseHost(agent);
    if (session === undefined) return agent;
    return (await this.#startOn(agent, session)) ?? (await this.get(agentId));
  }

  async #chooseHost(agent: AgentRecord): Promise<HostSession | undefined> {
    const { sessions, store } = this.#options;
    if (agent.hostId !== null) {
      const session = sessions.get(agent.hostId);
      return session !== undefined && unsupportedReason(session.hello, agent.spec) === undefined ? session : undefined;
    }
    const load = await store.countAgentsByHost(LIVE_AGENT_STATES);
    let best: HostSession | undefined;
    let bestLoad = Infinity;
    for (const session of sessions.all()) {
      if (unsupportedReason(session.hello, agent.spec) !== undefined) continue;
      if (!agent.hostLabels.every((wanted) => session.hello.labels.some((l) => l.key === wanted.key && l.value === wanted.value))) continue;
      const n = load.get(session.hostId) ?? 0;
      if (session.hello.capacity > 0 && n >= session.hello.capacity) continue;
      if (n < bestLoad) {
        best = session;
        bestLoad = n;
      }
    }
    return best;
  }

  /** Starts `agent` on `session` under a new incarnation, fencing any older one; caller holds the lock. */
  async #startOn(agent: AgentRecord, session: HostSession, outdatedIncarnation = 0): Promise<AgentRecord | undefined> {
    // Past the one the host still runs, too: after a restore, the host's may be ahead of the store's
    // (a host's claim only moves its own agent's number, and only within reason).
    const claimed = Number.isSafeInteger(outdatedIncarnation) && outdatedIncarnation < 2 ** 48 ? outdatedIncarnation : 0;
    const incarnation = Math.max(agent.incarnation, claimed) + 1;
    const issued = await this.#issue(agent, { hostId: session.hostId, incarnation, state: 'starting' }, 'start');
    if (issued === undefined) return undefined;
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
    this.#options.events.emit('agent-state', { agentId: agent.agentId, state: 'starting', incarnation });
    this.#logger.info({ agentId: agent.agentId, hostId: session.hostId, incarnation }, 'agent started on host');
    await this.#options.delivery.attach(session, agent.agentId, issued.agent.ackedSeq);
    return issued.agent;
  }

  /** Signs the next credential of `agent` and records it (compare-and-set on its generation). */
  async #issue(
    agent: AgentRecord,
    placement: { hostId?: string; incarnation?: number; state?: AgentStateName },
    why: string,
  ): Promise<{ agent: AgentRecord; credential: Credential } | undefined> {
    const { issuer, store, clock, events } = this.#options;
    const hostId = placement.hostId ?? agent.hostId;
    if (hostId === null) return undefined;
    const generation = agent.generation + 1;
    const incarnation = placement.incarnation ?? agent.incarnation;
    const issued = await issuer.issue({ kind: 'agent', subject: agent.agentId, ttlMs: this.#options.agentTokenTtlMs, generation, hostId, incarnation });
    const { claims } = issued;
    const dueAtMs = rotationDueAtMs(claims.issuedAtMs, claims.expiresAtMs, this.#options.random());
    const updated = await store.updateAgent(
      agent.agentId,
      {
        hostId,
        incarnation,
        generation,
        tokenId: claims.tokenId,
        issuedAtMs: claims.issuedAtMs,
        expiresAtMs: claims.expiresAtMs,
        rotationDueAtMs: dueAtMs,
        updatedAtMs: clock.now(),
        ...(placement.state === undefined ? {} : { state: placement.state }),
      },
      { generation: agent.generation, incarnation: agent.incarnation },
    );
    if (updated === undefined) return undefined;
    if (this.#options.isRotationEnabled) this.#scheduler.schedule(agent.agentId, dueAtMs, claims.expiresAtMs);
    this.#logger.debug({ agentId: agent.agentId, why, ...logFields(claims) }, 'agent credential issued');
    events.emit('credential-issued', { agentId: agent.agentId, hostId, generation, tokenId: claims.tokenId, expiresAtMs: claims.expiresAtMs });
    return { agent: updated, credential: toCredential(issued) };
  }

  async #setState(agent: AgentRecord, state: AgentStateName, detail: string): Promise<AgentRecord | undefined> {
    const updated = await this.#options.store.updateAgent(
      agent.agentId,
      { state, detail, updatedAtMs: this.#options.clock.now() },
      { incarnation: agent.incarnation, states: [agent.state] },
    );
    if (updated !== undefined) {
      this.#options.events.emit('agent-state', { agentId: agent.agentId, state, incarnation: agent.incarnation });
      this.#logger.info({ agentId: agent.agentId, state }, 'agent state');
    }
    return updated;
  }

  /** Ends an agent: state, its tokens revoked at once, no more rotations. */
  async #end(agent: AgentRecord, state: AgentStateName, detail: string): Promise<AgentRecord> {
    const updated = await this.#options.store.updateAgent(agent.agentId, { state, detail, updatedAtMs: this.#options.clock.now() });
    this.#options.verifier.forgetSubject('agent', agent.agentId);
    this.#scheduler.unschedule(agent.agentId);
    this.#options.delivery.detach(agent.agentId);
    this.#options.events.emit('agent-state', { agentId: agent.agentId, state, incarnation: agent.incarnation });
    this.#logger.info({ agentId: agent.agentId, state, detail }, 'agent ended');
    return updated ?? agent;
  }
}

function validateSpec(spec: AgentSpecRecord): void {
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
