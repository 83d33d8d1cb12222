import type { ControlPlaneEventMap, ControlPlaneEvents } from '../events.js';
import type { AgentStateName } from '../store/store.js';
import type { EventKind, NewEventRecord } from '../store/event-store.js';
import type { EventLog } from './event-log.js';

/** The event kind of an agent's new state (`pending` after an end by itself: that end). */
function agentKind(state: AgentStateName, endedAs: 'exited' | 'failed' | undefined): EventKind {
  switch (state) {
    case 'starting':
      return 'agent.placed';
    case 'running':
      return 'agent.started';
    case 'pending':
      return endedAs === undefined ? 'agent.pending' : `agent.${endedAs}`;
    default:
      return `agent.${state}`;
  }
}


const NONE: Omit<NewEventRecord, 'atMs' | 'kind'> = { agentId: '', hostId: '', incarnation: 0, generation: 0, keyId: '', reason: '', detail: '' };

/**
 * Turns what the control plane reports in process ({@link ControlPlaneEvents})
 * into lifecycle events in the {@link EventLog}: agent states, moves and
 * rotations (not a placement's first credential: `agent.placed` says it),
 * dead letters, hosts, keys. Nothing per delivered message. No token (not even
 * a token id) goes in an event.
 */
export class EventRecorder {
  readonly #events: ControlPlaneEvents;
  readonly #subscriptions: [keyof ControlPlaneEventMap, (event: never) => void][];

  constructor(events: ControlPlaneEvents, log: EventLog) {
    this.#events = events;
    const record = (kind: EventKind, fields: Partial<Omit<NewEventRecord, 'atMs' | 'kind'>>): void => log.record({ ...NONE, ...fields, kind });
    const on = <K extends keyof ControlPlaneEventMap>(name: K, listener: (...args: ControlPlaneEventMap[K]) => void): [keyof ControlPlaneEventMap, (event: never) => void] => [
      name,
      listener,
    ];
    this.#subscriptions = [
      on('agent-state', (e) =>
        record(agentKind(e.state, e.endedAs), { agentId: e.agentId, hostId: e.hostId ?? '', incarnation: e.incarnation, detail: e.detail ?? '' }),
      ),
      on('agent-moved', (e) =>
        record('agent.moved', { agentId: e.agentId, hostId: e.toHostId, incarnation: e.incarnation, detail: `moved from host ${e.fromHostId} to ${e.toHostId}` }),
      ),
      on('credential-issued', (e) => {
        if (e.reason === 'placed') return;
        // No detail: the fields say it all, and a storm makes thousands a second.
        record('credential.rotated', { agentId: e.agentId, hostId: e.hostId, incarnation: e.incarnation, generation: e.generation, reason: e.reason });
      }),
      on('dead-letter', (e) => record('message.dead_lettered', { agentId: e.agentId, detail: `message ${e.id} (seq ${e.seq}) refused too often` })),
      on('host-connected', (e) => record('host.connected', { hostId: e.hostId })),
      on('host-disconnected', (e) => record('host.disconnected', { hostId: e.hostId })),
      on('host-lost', (e) => record('host.lost', { hostId: e.hostId, detail: `no contact for ${e.silentForMs} ms` })),
      on('host-drained', (e) => record('host.drained', { hostId: e.hostId, detail: 'nothing movable is left on it' })),
      on('signing-key', (e) => record(e.change === 'rotated' ? 'key.rotated' : 'key.revoked', { keyId: e.kid, detail: `${e.purpose} key: ${e.detail}` })),
    ];
    const emitter = events as unknown as { on(name: string, listener: (event: never) => void): void };
    for (const [name, listener] of this.#subscriptions) emitter.on(name, listener);
  }

  /** Stops recording. Idempotent. */
  close(): void {
    const emitter = this.#events as unknown as { off(name: string, listener: (event: never) => void): void };
    for (const [name, listener] of this.#subscriptions) emitter.off(name, listener);
    this.#subscriptions.length = 0;
  }
}
