/**
 * Host drains: `hosts drain HOST` (or a host's own DrainRequest at SIGTERM)
 * makes a host unschedulable, persisted, and moves its agents elsewhere one at
 * a time (each move: agent-move.ts). Agents made by `ensure` or with a restart
 * policy move; the others stay, reported as such. An agent no host can take
 * now is reported `blocked` with the reason and stays where it is; blocked
 * agents are tried again when a host connects, another host is uncordoned, or
 * `hosts drain` is called again. Once no movable agent is left the drain is
 * `drained` (still unschedulable) until `hosts uncordon`, which also stops a
 * drain in progress (a move its host was already asked for completes).
 */
import type { Clock } from '../../common/clock.js';
import { NotFoundError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { AgentManager } from '../agents/agent-manager.js';
import type { MoveOutcome } from '../agents/agent-move.js';
import type { ControlPlaneEvents } from '../events.js';
import { LIVE_AGENT_STATES, type HostDrainState, type Store } from '../store/store.js';
import type { HostSessions } from './host-session.js';

const PAGE = 500;

/** One agent of a draining host, as the drain last saw it. */
export interface DrainAgentStatus {
  agentId: string;
  outcome: 'waiting' | 'moving' | 'moved' | 'blocked' | 'stays';
  targetHostId: string;
  reason: string;
  atMs: number;
}

/** A drain as {@link HostDrains.status} reports it. */
export interface DrainStatus {
  hostId: string;
  /** `''` when the host is not drained (never, or uncordoned). */
  state: HostDrainState | '';
  agents: DrainAgentStatus[];
  /** Nothing more happens without a change elsewhere: every agent moved, blocked or staying. */
  isSettled: boolean;
}

/** Options of {@link HostDrains}. */
export interface HostDrainsOptions {
  store: Store;
  agents: Pick<AgentManager, 'moveAgent'>;
  sessions: HostSessions;
  clock: Clock;
  logger: Logger;
  events: ControlPlaneEvents;
}

/** A drain running in this control plane. */
interface DrainRun {
  hostId: string;
  agents: Map<string, DrainAgentStatus>;
  /** Set by uncordon: no new move starts. */
  stop: AbortController;
  /** Something may have changed (a host connected, a drain call): make another pass after this one. */
  isRerunRequested: boolean;
  /** Wakes a run waiting for a change. */
  wake: (() => void) | undefined;
  /** Wakes status() callers waiting for progress. */
  changed: Set<() => void>;
  isSettled: boolean;
  /** Its loop ended (drained, stopped, or failed); kept so its last results can still be shown. */
  isDone: boolean;
  loop: Promise<void> | undefined;
}

/** Runs the drains of this control plane's store (see the module comment). */
export class HostDrains {
  readonly #options: HostDrainsOptions;
  readonly #logger: Logger;
  readonly #runs = new Map<string, DrainRun>();
  #isClosed = false;

  constructor(options: HostDrainsOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'drain' });
    // A host that connects may be where a blocked agent can go, or the draining host itself coming back.
    options.events.on('host-connected', () => {
      for (const run of this.#runs.values()) this.#rerun(run);
    });
  }

  /** Resumes every drain a previous control plane left `draining` in the store. */
  async start(): Promise<void> {
    for (const drain of await this.#options.store.listHostDrains()) {
      if (drain.state !== 'draining' || this.#isClosed) continue;
      this.#logger.info({ hostId: drain.hostId }, 'resuming a drain');
      this.#ensureRun(drain.hostId);
    }
  }

  /** Stops every run (moves their hosts were asked for complete when the hosts report them). */
  async close(): Promise<void> {
    this.#isClosed = true;
    const loops: Promise<void>[] = [];
    for (const run of this.#runs.values()) {
      run.stop.abort();
      run.wake?.();
      if (run.loop !== undefined) loops.push(run.loop);
    }
    await Promise.all(loops);
  }

  /** Starts (or, on a draining host, goes on with and retries the blocked agents of) a drain of `hostId`. */
  async drain(hostId: string, by: 'operator' | 'host'): Promise<DrainStatus> {
    const { store, clock } = this.#options;
    const host = await store.getHost(hostId);
    if (host === undefined) throw new NotFoundError(`no host ${hostId}`);
    const before = await store.setHostDrain(hostId, 'draining', clock.now());
    if (before?.state !== 'draining') this.#logger.warn({ hostId, by }, 'host draining: unschedulable, its agents are moved elsewhere one at a time');
    this.#ensureRun(hostId);
    const session = this.#options.sessions.get(hostId);
    if (by === 'host' && session?.state === 'open') {
      // The host (at SIGTERM) waits to hear of every agent that will not move: what an earlier drain found already, too.
      for (const agent of this.#runs.get(hostId)?.agents.values() ?? []) {
        if (agent.outcome === 'blocked' || agent.outcome === 'stays') session.send({ drainUpdate: { agentId: agent.agentId, outcome: agent.outcome, reason: agent.reason } });
      }
    }
    return this.status(hostId, 0);
  }

  /** Makes `hostId` schedulable again and stops its drain; returns the drain state it had. */
  async uncordon(hostId: string): Promise<HostDrainState | ''> {
    const before = await this.#options.store.setHostDrain(hostId, null, this.#options.clock.now());
    const run = this.#runs.get(hostId);
    if (run !== undefined) {
      run.stop.abort();
      run.wake?.();
      this.#notify(run);
      // A later drain starts afresh.
      if (run.isDone) this.#runs.delete(hostId);
      else {
        run.loop?.then(
          () => this.#runs.get(hostId) === run && this.#runs.delete(hostId),
          () => undefined,
        );
      }
    }
    this.#logger.info({ hostId, was: before?.state ?? '' }, 'host uncordoned: schedulable again');
    // Room appeared: blocked agents of other drains may fit now.
    for (const other of this.#runs.values()) if (other.hostId !== hostId) this.#rerun(other);
    return before?.state ?? '';
  }

  /**
   * The drain of `hostId` as it stands; with `waitMs` > 0, once it changes or
   * settles, or after `waitMs` on the clock, whichever is first.
   */
  async status(hostId: string, waitMs: number): Promise<DrainStatus> {
    const run = this.#runs.get(hostId);
    if (run !== undefined && waitMs > 0 && !run.isSettled && !run.isDone) {
      const wait = new AbortController();
      const onChange = (): void => wait.abort();
      run.changed.add(onChange);
      try {
        await this.#options.clock.sleep(waitMs, wait.signal);
      } finally {
        run.changed.delete(onChange);
      }
    }
    const drain = await this.#options.store.getHostDrain(hostId);
    if (drain === undefined && (await this.#options.store.getHost(hostId)) === undefined) throw new NotFoundError(`no host ${hostId}`);
    const current = this.#runs.get(hostId);
    return {
      hostId,
      state: drain?.state ?? '',
      agents: current === undefined ? [] : [...current.agents.values()].map((a) => ({ ...a })),
      isSettled: drain?.state !== 'draining' || (current?.isSettled ?? false),
    };
  }

  /** The drain state of each drained host (for `hosts ls`). */
  async states(): Promise<Map<string, HostDrainState>> {
    return new Map((await this.#options.store.listHostDrains()).map((d) => [d.hostId, d.state]));
  }

  /** Whether a drain of `hostId` runs in this control plane (for tests). */
  isRunning(hostId: string): boolean {
    const run = this.#runs.get(hostId);
    return run !== undefined && !run.isDone;
  }

  #ensureRun(hostId: string): void {
    const existing = this.#runs.get(hostId);
    if (existing !== undefined && !existing.isDone && !existing.stop.signal.aborted) {
      this.#rerun(existing);
      return;
    }
    if (this.#isClosed) return;
    const run: DrainRun = {
      hostId,
      // What an earlier run of this drain found stays visible (a drain called again on a drained host).
      agents: new Map(existing?.agents),
      stop: new AbortController(),
      isRerunRequested: true,
      wake: undefined,
      changed: new Set(),
      isSettled: false,
      isDone: false,
      loop: undefined,
    };
    this.#runs.set(hostId, run);
    run.loop = this.#run(run)
      .catch((err: unknown) => this.#logger.error({ err, hostId }, 'drain failed; `hosts drain` again resumes it'))
      .finally(() => {
        run.isDone = true;
        run.isSettled = true;
        this.#notify(run);
      });
  }

  #rerun(run: DrainRun): void {
    run.isRerunRequested = true;
    run.wake?.();
  }

  #notify(run: DrainRun): void {
    for (const onChange of run.changed) onChange();
  }

  #record(run: DrainRun, agentId: string, outcome: DrainAgentStatus['outcome'], targetHostId: string, reason: string): void {
    const previous = run.agents.get(agentId);
    run.agents.set(agentId, { agentId, outcome, targetHostId, reason, atMs: this.#options.clock.now() });
    if (previous?.outcome === outcome && previous.reason === reason) return;
    this.#notify(run);
    if (outcome !== 'blocked' && outcome !== 'stays') return;
    this.#logger.warn({ hostId: run.hostId, agentId, outcome, reason }, outcome === 'blocked' ? 'drain: agent blocked' : 'drain: agent stays');
    // The host is told too: at SIGTERM it reports at once each agent it cannot hand over.
    const session = this.#options.sessions.get(run.hostId);
    if (session?.state === 'open') session.send({ drainUpdate: { agentId, outcome, reason } });
  }

  /** Passes over the host's live agents, moving them one at a time, until none is left to move or the drain is stopped. */
  async #run(run: DrainRun): Promise<void> {
    const { store, agents, clock } = this.#options;
    const signal = run.stop.signal;
    while (!signal.aborted) {
      run.isRerunRequested = false;
      run.isSettled = false;
      let movable = 0;
      for (let afterId: string | null = null; ; ) {
        const page = await store.listAgents({ hostId: run.hostId, states: LIVE_AGENT_STATES }, afterId, PAGE);
        for (const agent of page.items) if (!run.agents.has(agent.agentId) || run.agents.get(agent.agentId)?.outcome === 'moved') this.#record(run, agent.agentId, 'waiting', '', '');
        for (const agent of page.items) {
          if (signal.aborted) return;
          const known = run.agents.get(agent.agentId);
          if (known?.outcome === 'stays') continue;
          this.#record(run, agent.agentId, 'moving', '', `moving off ${run.hostId}`);
          const outcome: MoveOutcome = await agents.moveAgent(agent.agentId, run.hostId, signal);
          if (outcome.outcome === 'moved') this.#record(run, agent.agentId, 'moved', outcome.targetHostId, outcome.reason);
          else if (outcome.outcome === 'gone') run.agents.delete(agent.agentId);
          else {
            this.#record(run, agent.agentId, outcome.outcome, '', outcome.reason);
            if (outcome.outcome === 'blocked') movable++;
          }
        }
        afterId = page.nextAfterId;
        if (afterId === null) break;
      }
      if (signal.aborted) return;
      if (movable === 0 && !run.isRerunRequested) {
        // Nothing movable is left on the host (what stays, stays): drained, still unschedulable.
        const still = await store.getHostDrain(run.hostId);
        if (still?.state !== 'draining') return;
        await store.setHostDrain(run.hostId, 'drained', clock.now());
        this.#options.events.emit('host-drained', { hostId: run.hostId });
        this.#logger.warn({ hostId: run.hostId, stays: [...run.agents.values()].filter((a) => a.outcome === 'stays').length }, 'host drained');
        return;
      }
      run.isSettled = !run.isRerunRequested;
      this.#notify(run);
      // Blocked agents wait for a change: a host connecting, another uncordoned, another drain call.
      while (!run.isRerunRequested && !signal.aborted) await new Promise<void>((resolve) => (run.wake = resolve));
      run.wake = undefined;
    }
  }
}
