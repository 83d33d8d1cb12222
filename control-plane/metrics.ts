import { Counter, Gauge, Registry } from 'prom-client';
import type { ControlPlaneEventMap, ControlPlaneEvents } from './events.js';
import type { HostSessions } from './hosts/host-session.js';
import { registerOperationsMetrics, type OperationsMetricsOptions } from './operations-metrics.js';
import type { Store } from './store/store.js';

/** Options of {@link createMetrics} (with what the operations metrics read: see operations-metrics.ts). */
export interface MetricsOptions extends OperationsMetricsOptions {
  events: ControlPlaneEvents;
  sessions: HostSessions;
  store: Store;
  /** WatchEvents streams open now. */
  eventWatchers: () => number;
}

/**
 * The control plane's Prometheus metrics, in a registry of its own (never the
 * global default, so two servers in one process do not collide). Labels are
 * fixed words and agent states: never a token, never an id.
 */
export function createMetrics(options: MetricsOptions): { registry: Registry; close: () => void } {
  const { events, sessions, store, eventWatchers } = options;
  const registry = new Registry();
  new Gauge({
    name: 'tether_hosts_connected',
    help: 'Hosts with an open stream.',
    registers: [registry],
    collect() {
      this.set(sessions.size);
    },
  });
  new Gauge({
    name: 'tether_agents',
    help: 'Agents by state.',
    labelNames: ['state'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const [state, n] of await store.countAgentsByState()) this.set({ state }, n);
    },
  });
  new Gauge({
    name: 'tether_outbox_pending_messages',
    help: 'Messages appended and not yet acknowledged, over all agents.',
    registers: [registry],
    async collect() {
      this.set(await store.countPendingMessages());
    },
  });
  const credentials = new Counter({ name: 'tether_credentials_issued_total', help: 'Credentials issued, by kind.', labelNames: ['kind'], registers: [registry] });
  const acked = new Counter({ name: 'tether_messages_acked_total', help: 'Messages taken by agents.', registers: [registry] });
  const dead = new Counter({ name: 'tether_messages_dead_lettered_total', help: 'Messages dead-lettered after too many refusals.', registers: [registry] });
  const heartbeats = new Counter({ name: 'tether_heartbeats_total', help: 'Agent heartbeats accepted.', registers: [registry] });
  const authFailures = new Counter({
    name: 'tether_auth_failures_total',
    help: 'Refused callers, by principal and reason.',
    labelNames: ['principal', 'reason'],
    registers: [registry],
  });
  new Gauge({
    name: 'tether_event_watchers',
    help: 'WatchEvents streams open (catching up or live).',
    registers: [registry],
    collect() {
      this.set(eventWatchers());
    },
  });
  const watchersCut = new Counter({ name: 'tether_event_watchers_cut_total', help: 'WatchEvents streams cut for not reading (their buffer bound reached).', registers: [registry] });
  const rejects = new Counter({ name: 'tether_envelopes_rejected_total', help: 'Host envelopes answered with Reject.', labelNames: ['what'], registers: [registry] });

  // Each subscription with its removal, so close() undoes exactly what was done here.
  const subscriptions: [keyof ControlPlaneEventMap, (event: never) => void][] = [
    ['credential-issued', (e: { agentId: string }) => credentials.inc({ kind: e.agentId === '' ? 'host' : 'agent' })],
    ['message-acked', (e: { count: number }) => acked.inc(e.count)],
    ['dead-letter', () => dead.inc()],
    ['heartbeat', () => heartbeats.inc()],
    ['auth-failure', (e: { principal: string; reason: string }) => authFailures.inc({ principal: e.principal, reason: e.reason })],
    ['reject', (e: { what: string }) => rejects.inc({ what: e.what })],
    ['event-watcher-cut', () => watchersCut.inc()],
  ];
  const emitter = events as unknown as { on(name: string, listener: (event: never) => void): void; off(name: string, listener: (event: never) => void): void };
  for (const [name, listener] of subscriptions) emitter.on(name, listener);
  // Rotations, lowest time-to-expiry, signing cap, delivery latency, outbox bytes, reconnects, skew.
  const closeOperations = registerOperationsMetrics(registry, options);
  return {
    registry,
    close: () => {
      for (const [name, listener] of subscriptions) emitter.off(name, listener);
      closeOperations();
    },
  };
}
