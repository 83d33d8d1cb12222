/**
 * Moving one agent off a host (a drain) without losing or repeating a message
 * and without two live copies, in the order the steps must happen:
 *
 * 1. **Reserve** room on a target, chosen by the same placement as any other
 *    (the agent's named host or labels; the host it leaves is never a
 *    candidate): a row the store counts in the target's load. No target: the
 *    agent stays where it is and the move is `blocked`, with the reason.
 * 2. **Stop giving it messages**: its delivery is held (nothing more is sent;
 *    Acks of what was sent are still taken).
 * 3. **Hand over**: its host is sent `StopAgent{hand_over}`: the agent takes
 *    nothing more, finishes the message in hand (up to the host's handler
 *    deadline), its Ack goes out, then it is stopped and its host reports
 *    `stopped` with the seq taken. The host confirming the stop is what makes
 *    this safe without waiting for the old incarnation's tokens to expire.
 * 4. **Make its acks durable**: everything up to that seq is committed.
 * 5. **Fence and start**: one store commit puts it on the target under a new
 *    incarnation (every credential of the old one refused from that commit,
 *    {@link AgentManager.isAgentTokenRevoked}), taking the reserved room;
 *    only then is `StartAgent` sent, delivery resuming after the acked seq.
 *
 * Step 5 runs when the host's `stopped` event arrives, whoever waits for it:
 * a control plane restarted between 3 and 5 completes the move when the host
 * reports the stop (live, or in its next Hello's `ended`).
 */
import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { AgentEvent } from '../../gen/tether/v1/host.js';
import type { DeliveryManager } from '../delivery/delivery-manager.js';
import type { ControlPlaneEvents } from '../events.js';
import type { HostSession, HostSessions } from '../hosts/host-session.js';
import { LIVE_AGENT_STATES, type AgentRecord, type AgentSpecRecord, type AgentStateName, type PlaceAgentResult, type Store } from '../store/store.js';
import { decidePlacement, type PlacementCandidate } from './placement.js';

/** How a move of one agent went. */
export type MoveOutcome =
  | { outcome: 'moved'; targetHostId: string; incarnation: number; ackedSeq: number; reason: string }
  /** It stays on its host for now: no target fits, or its host cannot confirm a stop. Tried again later. */
  | { outcome: 'blocked'; reason: string }
  /** A drain does not move it (neither ensured nor with a restart policy). */
  | { outcome: 'stays'; reason: string }
  /** It is no longer a live agent of that host (ended, moved, lost meanwhile). */
  | { outcome: 'gone'; reason: string };

/** What a move needs of the agent manager (which owns the agents' locks, placement and starts). */
export interface MoveContext {
  store: Store;
  sessions: HostSessions;
  clock: Clock;
  logger: Logger;
  delivery: DeliveryManager;
  events: ControlPlaneEvents;
  /** How long a host may take to confirm a hand-over before the move is reported blocked (on `clock`). */
  handOverTimeoutMs: number;
  /** Runs `section` under the agent's lock. */
  lock: <T>(agentId: string, section: () => Promise<T>) => Promise<T>;
  /** Whether a drain moves it (see isRescheduledWhenLost). */
  isMovable: (agent: AgentRecord) => boolean;
  /** Placement candidates among `open` for an agent of `spec`. */
  candidates: (open: readonly HostSession[], spec: AgentSpecRecord) => Promise<PlacementCandidate[]>;
  /** Starts `agent` on `session` under a new incarnation: the commit fences the old one. Caller holds the lock. */
  startOn: (agent: AgentRecord, session: HostSession, reason: string) => Promise<PlaceAgentResult>;
  /** Drops rotations, cached tokens, delivery and heartbeats of the agent's placement. */
  forgetPlacement: (agentId: string) => void;
  /**
   * Fences the agent and leaves it `pending` (placed by the next sweep) when it
   * cannot be started on its target: every credential of its old incarnation
   * refused from that commit. Caller holds the lock.
   */
  fenceToPending: (agent: AgentRecord, reason: string) => Promise<void>;
}

/** A move waiting for its host's confirmation. */
interface Waiter {
  incarnation: number;
  resolve: (outcome: MoveOutcome) => void;
}

/** The per-agent steps of a drain (see the module comment). */
export class AgentMoves {
  readonly #context: MoveContext;
  readonly #logger: Logger;
  readonly #waiters = new Map<string, Waiter>();

  constructor(context: MoveContext) {
    this.#context = context;
    this.#logger = context.logger.child({ component: 'agent-move' });
  }

  /** Moves waiting for their host's confirmation (for tests). */
  get inFlight(): number {
    return this.#waiters.size;
  }

  /**
   * Moves `agentId` off `fromHostId` (steps 1 to 5), resolving once it was
   * started on its target, or with why not. `signal` gives up waiting (the
   * move itself, once its host was asked, completes when the host confirms).
   */
  async move(agentId: string, fromHostId: string, signal?: AbortSignal): Promise<MoveOutcome> {
    const { lock, clock } = this.#context;
    const begun = await lock(agentId, () => this.#begin(agentId, fromHostId));
    if (begun.outcome !== 'asked') return begun;
    const { session, incarnation, targetHostId } = begun;
    const confirmed = new Promise<MoveOutcome>((resolve) => this.#waiters.set(agentId, { incarnation, resolve }));
    // It may end or be moved by something else meanwhile (it exited, its host was lost or revoked): no confirmation comes then.
    const onState = (event: { agentId: string; state: AgentStateName; incarnation: number }): void => {
      if (event.agentId !== agentId || LIVE_AGENT_STATES.includes(event.state)) return;
      this.#waiters.get(agentId)?.resolve({ outcome: 'gone', reason: `it became ${event.state} while being handed over` });
    };
    this.#context.events.on('agent-state', onState);
    const stop = new AbortController();
    const onClosed = (): void => stop.abort();
    session.closedSignal.addEventListener('abort', onClosed, { once: true });
    signal?.addEventListener('abort', onClosed, { once: true });
    if (session.closedSignal.aborted || signal?.aborted === true) stop.abort();
    try {
      const timedOut = clock.sleep(this.#context.handOverTimeoutMs, stop.signal).then((): MoveOutcome => {
        if (session.closedSignal.aborted) {
          return { outcome: 'blocked', reason: `its host ${fromHostId} disconnected before it confirmed the stop; tried again when it is back` };
        }
        if (signal?.aborted === true) return { outcome: 'blocked', reason: 'the drain was stopped while its host was handing it over' };
        // The race was decided by the confirmation (or the agent leaving): this answer is never seen.
        if (stop.signal.aborted) return { outcome: 'gone', reason: 'settled' };
        // Its host may still be running it as before (the StopAgent lost): it gets its messages again meanwhile.
        this.#context.delivery.unhold(agentId);
        return { outcome: 'blocked', reason: `its host ${fromHostId} did not confirm the hand-over within ${this.#context.handOverTimeoutMs} ms` };
      });
      const outcome = await Promise.race([confirmed, timedOut]);
      if (outcome.outcome === 'moved') this.#logger.info({ agentId, fromHostId, targetHostId: outcome.targetHostId, incarnation: outcome.incarnation }, 'agent moved');
      else this.#logger.warn({ agentId, fromHostId, targetHostId, reason: outcome.reason }, 'agent move not completed');
      return outcome;
    } finally {
      stop.abort();
      this.#context.events.off('agent-state', onState);
      session.closedSignal.removeEventListener('abort', onClosed);
      signal?.removeEventListener('abort', onClosed);
      if (this.#waiters.get(agentId)?.incarnation === incarnation) this.#waiters.delete(agentId);
    }
  }

  /** Steps 1 to 3, under the agent's lock: reserve a target, hold delivery, ask the host to hand it over. */
  async #begin(
    agentId: string,
    fromHostId: string,
  ): Promise<Exclude<MoveOutcome, { outcome: 'moved' }> | { outcome: 'asked'; session: HostSession; incarnation: number; targetHostId: string }> {
    const { store, sessions, clock, delivery } = this.#context;
    const agent = await store.getAgent(agentId);
    if (agent?.hostId !== fromHostId || !LIVE_AGENT_STATES.includes(agent.state)) {
      await this.#releaseStale(agentId);
      return { outcome: 'gone', reason: agent === undefined ? 'no such agent' : `it is ${agent.state} on ${agent.hostId ?? 'no host'}` };
    }
    if (!this.#context.isMovable(agent)) {
      return { outcome: 'stays', reason: 'made by dispatch with restart policy never: a drain does not move it (stop it, or ensure it to make it movable)' };
    }
    const session = sessions.get(fromHostId);
    if (session === undefined || session.state === 'closed') {
      return { outcome: 'blocked', reason: `its host ${fromHostId} is not connected to confirm a stop; tried again when it is back` };
    }
    let move = await store.getMove(agentId);
    if (move !== undefined && (move.fromHostId !== fromHostId || move.incarnation !== agent.incarnation)) {
      // Left by an earlier placement (a control plane that stopped mid-move, a host lost meanwhile).
      await store.releaseMove(agentId);
      move = undefined;
    }
    let targetHostId = move?.toHostId;
    if (targetHostId === undefined) {
      const reserved = await this.#reserve(agent, fromHostId);
      if (reserved.outcome === 'blocked') return reserved;
      targetHostId = reserved.hostId;
    }
    delivery.hold(agentId);
    const detail = `handing over to ${targetHostId}: its host ${fromHostId} is draining`;
    await store.updateAgent(agentId, { detail, updatedAtMs: clock.now() }, { incarnation: agent.incarnation, states: [agent.state] });
    session.send({ stopAgent: { agentId, reason: `drain: moving to ${targetHostId}`, handOver: true } });
    this.#logger.info({ agentId, fromHostId, targetHostId, incarnation: agent.incarnation }, 'agent hand-over asked');
    return { outcome: 'asked', session, incarnation: agent.incarnation, targetHostId };
  }

  /** Step 1: reserves room on the best host that fits, trying the next one when the store finds it full meanwhile. */
  async #reserve(agent: AgentRecord, fromHostId: string): Promise<{ outcome: 'reserved'; hostId: string } | { outcome: 'blocked'; reason: string }> {
    const { store, sessions, clock } = this.#context;
    if (agent.requestedHostId === fromHostId) {
      return { outcome: 'blocked', reason: `it was asked for on host ${fromHostId} by name, so no other host may take it` };
    }
    const constraint = { hostId: agent.requestedHostId, labels: agent.hostLabels };
    const tried = new Set<string>([fromHostId]);
    let reason = 'no other host is connected';
    for (;;) {
      const open = sessions.all().filter((s) => s.state === 'open' && !tried.has(s.hostId));
      const decision = decidePlacement(await this.#context.candidates(open, agent.spec), constraint);
      if (decision.outcome === 'pending') return { outcome: 'blocked', reason: tried.size === 1 ? decision.reason : reason };
      const result = await store.reserveMove(agent.agentId, fromHostId, decision.hostId, agent.incarnation, clock.now());
      if (result === 'reserved') return { outcome: 'reserved', hostId: decision.hostId };
      if (result === 'agent-changed') return { outcome: 'blocked', reason: 'it changed while a target was reserved; tried again' };
      reason = `host ${decision.hostId} was ${result === 'host-full' ? 'filled' : 'cordoned or revoked'} meanwhile, and no other fits`;
      tried.add(decision.hostId);
    }
  }

  /**
   * Steps 4 and 5, when `agent`'s host reports it `stopped` after a hand-over
   * (the caller holds the lock and checked the agent is this host's, in a live
   * state, at the event's incarnation).
   */
  async onHandedOver(session: HostSession, agent: AgentRecord, event: AgentEvent): Promise<void> {
    const { store, sessions, delivery } = this.#context;
    // Taken now: the state changes below are this move's, not something else moving the agent.
    const waiter = this.#waiters.get(agent.agentId);
    if (waiter?.incarnation === agent.incarnation) this.#waiters.delete(agent.agentId);
    const takenSeq = event.takenSeq ?? 0;
    const ackedSeq = await delivery.handOver(agent.agentId, takenSeq);
    this.#context.forgetPlacement(agent.agentId);
    const current = (await store.getAgent(agent.agentId)) ?? agent;
    const found = await store.getMove(agent.agentId);
    // Only a reservation made for this very placement: one left by an earlier one is stale.
    const move = found?.fromHostId === session.hostId && found.incarnation === agent.incarnation ? found : undefined;
    const target = move === undefined ? undefined : sessions.get(move.toHostId);
    const what = `its host ${session.hostId} handed it over (stopped, every message up to seq ${ackedSeq} taken and acknowledged${
      event.detail === 'handed over' ? '' : `; ${event.detail}`
    })`;
    let outcome: MoveOutcome | undefined;
    if (move !== undefined && target !== undefined && target.state === 'open') {
      const reason = `moved off ${session.hostId} by a drain: ${what}; old incarnation ${current.incarnation} fenced`;
      const started = await this.#context.startOn(current, target, reason);
      if (started.outcome === 'placed') {
        outcome = { outcome: 'moved', targetHostId: target.hostId, incarnation: started.agent.incarnation, ackedSeq, reason };
        this.#context.events.emit('agent-moved', { agentId: agent.agentId, fromHostId: session.hostId, toHostId: target.hostId, incarnation: started.agent.incarnation });
      }
    }
    if (outcome === undefined) {
      // Its target went away meanwhile: fenced all the same, and placed by the next sweep (never on a draining host).
      const reason = `${what}; old incarnation ${current.incarnation} fenced; ${move === undefined ? 'no target was reserved' : `its target ${move.toHostId} is gone`}, so it waits to be placed`;
      await store.releaseMove(agent.agentId);
      const fresh = (await store.getAgent(agent.agentId)) ?? current;
      await this.#context.fenceToPending(fresh, reason);
      outcome = { outcome: 'moved', targetHostId: '', incarnation: fresh.incarnation, ackedSeq, reason };
    }
    if (waiter?.incarnation === agent.incarnation) waiter.resolve(outcome);
  }

  /** Drops a reservation the agent no longer needs (it left its host, or ended). */
  async #releaseStale(agentId: string): Promise<void> {
    if ((await this.#context.store.getMove(agentId)) !== undefined) await this.#context.store.releaseMove(agentId);
  }
}
