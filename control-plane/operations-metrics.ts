import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Clock } from '../common/clock.js';
import type { ControlPlaneEventMap, ControlPlaneEvents } from './events.js';
import { ROTATION_REASONS } from './rotation/rotation-reason.js';
import type { Store } from './store/store.js';

/** Where a delivery's latency falls: from 5 ms (a busy local loop) to an hour (an agent or host away). */
export const DELIVERY_LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600];
/** Where a host's clock skew falls: under the clock tolerance (30 s by default) is harmless; past it, tokens are refused. */
export const CLOCK_SKEW_BUCKETS_S = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300];

/** The rotation scheduler's state, read on scrape. */
export interface RotationState {
  /** The soonest expiry (ms since the epoch) of the scheduled agents' tokens; Infinity when none is scheduled. */
  lowestScheduledExpiresAtMs(): number;
  /** The signing-rate cap in force now. */
  readonly maxRotationsPerSecond: number;
  /** Rotations due and waiting for the signing budget. */
  readonly rotationsWaiting: number;
}

/** What {@link registerOperationsMetrics} reads. */
export interface OperationsMetricsOptions {
  events: ControlPlaneEvents;
  store: Store;
  clock: Clock;
  rotation: RotationState;
  /** The configured lifetime of agent tokens: what the lowest time-to-expiry is alerted against (below a third of it). */
  agentTokenTtlMs: number;
}

/**
 * The metrics the shipped alert rules and dashboard stand on (ops/): rotations
 * by reason, the lowest token time-to-expiry against the TTL, the signing cap,
 * delivery latency, outbox bytes, host reconnects and losses, clock skew.
 * Registered into the control plane's own registry; labels are fixed words,
 * never an id. Returns the removal of its event subscriptions.
 */
export function registerOperationsMetrics(registry: Registry, options: OperationsMetricsOptions): () => void {
  const { events, store, clock, rotation, agentTokenTtlMs } = options;
  const registers = [registry];
  new Gauge({
    name: 'tether_agent_token_ttl_seconds',
    help: 'The configured lifetime of agent tokens.',
    registers,
    collect() {
      this.set(agentTokenTtlMs / 1000);
    },
  });
  new Gauge({
    name: 'tether_agent_lowest_token_ttl_seconds',
    help: "Seconds until the soonest-expiring token of the agents with a rotation scheduled (live, host connected) expires; absent while there is none.",
    registers,
    collect() {
      // Absent, not 0: a 0 would read as a token about to expire (an unlabelled gauge keeps a 0 through reset()).
      this.remove();
      const lowestMs = rotation.lowestScheduledExpiresAtMs();
      if (Number.isFinite(lowestMs)) this.set((lowestMs - clock.now()) / 1000);
    },
  });
  new Gauge({
    name: 'tether_rotation_max_per_second',
    help: 'The signing-rate cap of scheduled rotations in force now (configured, or sized by auto).',
    registers,
    collect() {
      this.set(rotation.maxRotationsPerSecond);
    },
  });
  new Gauge({
    name: 'tether_rotations_waiting',
    help: 'Rotations due and waiting for the signing budget.',
    registers,
    collect() {
      this.set(rotation.rotationsWaiting);
    },
  });
  new Gauge({
    name: 'tether_outbox_bytes',
    help: 'Payload bytes held by all outboxes (unacknowledged or dead-lettered), as outbox admission counts them.',
    registers,
    async collect() {
      this.set(await store.countOutboxBytes());
    },
  });
  const rotations = new Counter({
    name: 'tether_rotations_total',
    help: 'Agent credentials replaced within their placement, by reason (due, resume, delivery, forced, key-revoked).',
    labelNames: ['reason'],
    registers,
  });
  for (const reason of ROTATION_REASONS) rotations.inc({ reason }, 0);
  const lastRotation = new Gauge({ name: 'tether_last_rotation_timestamp_seconds', help: 'When an agent credential was last rotated (unix seconds); 0 before any.', registers });
  const latency = new Histogram({
    name: 'tether_delivery_latency_seconds',
    help: 'From a message appended to its acknowledgement committed, for messages acknowledged on the stream they were sent on.',
    buckets: DELIVERY_LATENCY_BUCKETS_S,
    registers,
  });
  const reconnects = new Counter({
    name: 'tether_host_reconnects_total',
    help: 'Host streams opened with a host credential: the host had a stream before (a join opens the first).',
    registers,
  });
  const lost = new Counter({ name: 'tether_hosts_lost_total', help: 'Hosts declared lost (no stream for the lost-host grace).', registers });
  const skew = new Histogram({
    name: 'tether_clock_skew_seconds',
    help: "Hosts' clock skew against the control plane's, absolute, measured at each Pong.",
    buckets: CLOCK_SKEW_BUCKETS_S,
    registers,
  });

  const subscriptions: [keyof ControlPlaneEventMap, (event: never) => void][] = [
    [
      'credential-issued',
      (e: ControlPlaneEventMap['credential-issued'][0]) => {
        if (e.reason === 'placed' || e.agentId === '') return;
        rotations.inc({ reason: e.reason });
        lastRotation.set(clock.now() / 1000);
      },
    ],
    [
      'message-acked',
      (e: ControlPlaneEventMap['message-acked'][0]) => {
        for (const ms of e.deliveredInMs) latency.observe(ms / 1000);
      },
    ],
    ['host-connected', (e: ControlPlaneEventMap['host-connected'][0]) => e.isReconnect && reconnects.inc()],
    ['host-lost', () => lost.inc()],
    ['clock-skew', (e: ControlPlaneEventMap['clock-skew'][0]) => skew.observe(Math.abs(e.skewMs) / 1000)],
  ];
  const emitter = events as unknown as { on(name: string, listener: (event: never) => void): void; off(name: string, listener: (event: never) => void): void };
  for (const [name, listener] of subscriptions) emitter.on(name, listener);
  return () => {
    for (const [name, listener] of subscriptions) emitter.off(name, listener);
  };
}
