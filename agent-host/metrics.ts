import { Counter, Gauge, Registry } from 'prom-client';
import type { AgentHost } from './agent-host.js';
import type { AgentHostEventMap } from './events.js';
import { HEARTBEAT_RESULTS, heartbeatResult } from './heartbeat-result.js';

/**
 * The agent host's Prometheus metrics, in a registry of its own. The one to
 * alert on is `tether_host_lowest_token_ttl_seconds`: it falls when the host
 * cannot reach the control plane, long before any agent's token expires.
 */
export function createHostMetrics(host: AgentHost): { registry: Registry; close: () => void } {
  const registry = new Registry();
  new Gauge({
    name: 'tether_host_connected',
    help: '1 while the host has a stream to the control plane, else 0.',
    registers: [registry],
    collect() {
      this.set(host.state === 'connected' ? 1 : 0);
    },
  });
  new Gauge({
    name: 'tether_host_agents',
    help: 'Agents running on this host.',
    registers: [registry],
    collect() {
      this.set(host.agentIds().length);
    },
  });
  new Gauge({
    name: 'tether_host_lowest_token_ttl_seconds',
    help: "Seconds until the soonest-expiring token held here (an agent's or the host's own) expires; absent while none is held.",
    registers: [registry],
    collect() {
      // Absent, not 0: a 0 would read as a token about to expire (an unlabelled gauge keeps a 0 through reset()).
      this.remove();
      const lowestMs = host.lowestTimeToExpiryMs();
      if (Number.isFinite(lowestMs)) this.set(lowestMs / 1000);
    },
  });
  new Gauge({
    name: 'tether_host_agent_token_ttl_seconds',
    help: 'The lifetime of agent tokens the control plane announced (its default before any Welcome): alert when the lowest time-to-expiry falls below a third of it.',
    registers: [registry],
    collect() {
      this.set(host.rotationPolicy.agentTokenTtlMs / 1000);
    },
  });
  new Gauge({
    name: 'tether_host_clock_skew_seconds',
    help: "This host's clock minus the control plane's, from the last ping.",
    registers: [registry],
    collect() {
      this.set(host.clockSkewMs / 1000);
    },
  });
  const disconnects = new Counter({ name: 'tether_host_disconnects_total', help: 'Streams to the control plane that ended.', registers: [registry] });
  const heartbeats = new Counter({
    name: 'tether_host_heartbeats_total',
    help: 'Agent heartbeats, by result (ok, unauthenticated, permission_denied, unavailable, error).',
    labelNames: ['result'],
    registers: [registry],
  });
  const rotations = new Counter({ name: 'tether_host_rotations_applied_total', help: 'Rotated agent credentials applied.', registers: [registry] });
  const taken = new Counter({ name: 'tether_host_messages_taken_total', help: 'Messages agents took.', registers: [registry] });
  const warnings = new Counter({
    name: 'tether_host_expiry_warnings_total',
    help: 'Times the lowest time-to-expiry fell below the warning threshold.',
    registers: [registry],
  });
  const rejects = new Counter({ name: 'tether_host_envelopes_rejected_total', help: 'Envelopes the control plane refused.', registers: [registry] });
  for (const result of HEARTBEAT_RESULTS) heartbeats.inc({ result }, 0);

  // Each subscription with its removal, so close() undoes exactly what was done here.
  const subscriptions: [keyof AgentHostEventMap, (event: never) => void][] = [
    ['disconnected', () => disconnects.inc()],
    ['heartbeat', (e: AgentHostEventMap['heartbeat'][0]) => heartbeats.inc({ result: heartbeatResult(e) })],
    ['rotation-applied', () => rotations.inc()],
    ['message-taken', () => taken.inc()],
    ['expiry-warning', () => warnings.inc()],
    ['reject', () => rejects.inc()],
  ];
  const emitter = host.events as unknown as { on(name: string, listener: (event: never) => void): void; off(name: string, listener: (event: never) => void): void };
  for (const [name, listener] of subscriptions) emitter.on(name, listener);
  return {
    registry,
    close: () => {
      for (const [name, listener] of subscriptions) emitter.off(name, listener);
    },
  };
}
