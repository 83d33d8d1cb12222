/**
 * No herd after a restart: 200 hosts, each on a connection of its own (a
 * local subchannel pool per channel), all through one fault proxy, lose the
 * control plane together and keep failing until every one's reconnect backoff
 * has reached its cap (seen in its `disconnected` events). Then the control
 * plane is back, with every host's delay near its floor: Hellos processed at
 * once stay within the bound (measured by the admission gate's peak), the
 * excess is told to retry later (RESOURCE_EXHAUSTED with a retry-after, which
 * the hosts honour), every host resumes, none sees UNAUTHENTICATED (stream
 * ends, refusals and heartbeats counted), the resume rotations that fell due
 * in the outage are made, and an admin ListHosts loop is answered every time
 * throughout. Without the bound the same herd runs far more Hellos at once
 * (shown by hand in the branch's report: run with `maxConcurrentHellos: Infinity`).
 */
import { status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import { heartbeatResult } from '../../agent-host/heartbeat-result.js';
import type { Store } from '../../control-plane/store/store.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness } from '../support/harness.js';
import { HANG_BOUND_MS } from '../support/wait.js';

/**
 * 200 hosts open fresh connections at once: on a loaded two-core machine that alone can take most
 * of the suite's hang bound, so this file's waits get three of it (still only a bound on a hang).
 */
const HERD_BOUND_MS = 3 * HANG_BOUND_MS;

const HOSTS = 200;
/** Every this many hosts runs one agent (heartbeats to count, tokens to rotate on resume); the rest run none. */
const AGENT_EVERY = 4;
/** Hellos the control plane processes at once. */
const MAX_CONCURRENT_HELLOS = 16;
/** Hosts started at once while setting up: under the bound, so the joins themselves are never deferred. */
const SETUP_CONCURRENCY = MAX_CONCURRENT_HELLOS;
/** The hosts' backoff (the harness's): 10 ms doubling to a cap of 50 ms. */
const RECONNECT_MAX_DELAY_MS = 50;
const AGENT_TOKEN_TTL_MS = 120_000;
/** ListHosts calls made while the herd comes back, at most. */
const MAX_ADMIN_CALLS = 1_000;
/** Hosts per ListHosts page in the admin loop. */
const ADMIN_PAGE = 50;

/**
 * Holds the store write that opens every Hello (the host's capacity and labels)
 * while closed: Hello processing that takes a while, as it does under
 * `synchronous = FULL` or with many agents to resume, made deterministic. Every
 * Hello the control plane lets through waits here, so how many wait at once is
 * how many it processes at once.
 */
class HelloGate {
  isClosed = false;
  held = 0;
  #open: (() => void) | undefined;
  #opened: Promise<void> = Promise.resolve();

  wrap(store: Store): Store {
    return new Proxy(store, {
      get: (target, property, receiver) => {
        const value: unknown = Reflect.get(target, property, receiver);
        if (typeof value !== 'function') return value;
        return async (...args: unknown[]): Promise<unknown> => {
          if (property === 'updateHost' && this.isClosed && typeof args[1] === 'object' && args[1] !== null && 'capacity' in args[1]) {
            this.held++;
            await this.#opened;
          }
          return (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        };
      },
    });
  }

  close(): void {
    this.isClosed = true;
    this.#opened = new Promise((resolve) => {
      this.#open = resolve;
    });
  }

  open(): void {
    this.isClosed = false;
    this.#open?.();
  }
}

describe('a herd of hosts after a control-plane outage', { timeout: 4 * HERD_BOUND_MS }, () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await proxy?.close();
    proxy = undefined;
  });

  it(`keeps concurrent Hellos within ${MAX_CONCURRENT_HELLOS}, defers the rest, and brings all ${HOSTS} hosts back with no UNAUTHENTICATED, answering admin calls throughout`, async () => {
    const gate = new HelloGate();
    harness = await Harness.start({
      maxConcurrentHellos: MAX_CONCURRENT_HELLOS,
      helloRetryUnitMs: 100,
      agentTokenTtlMs: AGENT_TOKEN_TTL_MS,
      wrapStore: (store) => gate.wrap(store),
    });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;

    const hosts: { host: AgentHost; hostId: string; agentId: string | undefined }[] = [];
    for (let start = 0; start < HOSTS; start += SETUP_CONCURRENCY) {
      const batch = Array.from({ length: Math.min(SETUP_CONCURRENCY, HOSTS - start) }, async (_, k) => {
        const i = start + k;
        const { host, hostId } = await h.startHost(`herd-${i}`, {
          target: p.target,
          channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
          reconnectMaxDelayMs: RECONNECT_MAX_DELAY_MS,
        });
        const agentId = i % AGENT_EVERY === 0 ? `herd-agent-${i}` : undefined;
        if (agentId !== undefined) await h.dispatch(host, hostId, agentId);
        return { host, hostId, agentId };
      });
      hosts.push(...(await Promise.all(batch)));
    }
    const issuedAtMs = h.clock.now();
    const agentIds = hosts.flatMap(({ agentId }) => (agentId === undefined ? [] : [agentId]));
    expect(h.cp.connectedHosts).toBe(HOSTS);
    expect(p.openConnections).toBe(HOSTS);

    // What each host sees from the cut on.
    const unauthenticated: string[] = [];
    const refused: string[] = [];
    const deferrals: { retryInMs: number; retryAfterMs: number; capMs: number }[] = [];
    const atCap = new Set<string>();
    let heartbeatsOk = 0;
    const rotatedAfterHeal = new Set<string>();
    let isHealed = false;
    for (const { host, hostId } of hosts) {
      host.events.on('disconnected', (e) => {
        if (e.code === (status.UNAUTHENTICATED as number)) unauthenticated.push(`${hostId}: stream ${e.details}`);
        if (e.code === (status.RESOURCE_EXHAUSTED as number) && e.retryAfterMs !== undefined) deferrals.push({ retryInMs: e.retryInMs, retryAfterMs: e.retryAfterMs, capMs: e.capMs });
        if (e.retryAfterMs === undefined && e.capMs === RECONNECT_MAX_DELAY_MS) atCap.add(hostId);
      });
      host.events.on('refused', (e) => refused.push(`${hostId}: ${e.refusal}`));
      host.events.on('heartbeat', (e) => {
        const label = heartbeatResult(e);
        if (label === 'unauthenticated') unauthenticated.push(`${hostId}: heartbeat of ${e.agentId}`);
        if (label === 'ok') heartbeatsOk++;
      });
      host.events.on('rotation-applied', (e) => void (isHealed && rotatedAfterHeal.add(e.agentId)));
    }

    // The control plane is gone: every connection cut, every new one reset at once.
    p.refuseNew();
    p.cutAll();
    await advanceUntil(h.clock, 25, () => atCap.size === HOSTS, `all ${HOSTS} hosts' backoff to reach its cap`, HERD_BOUND_MS);
    // Past the agents' rotation due time (50–60 % of the TTL) while cut off: their rotations fall to the resume.
    h.clock.advance(Math.max(0, issuedAtMs + AGENT_TOKEN_TTL_MS * 0.6 - h.clock.now()));

    // Back, with every host's next attempt within 50 ms: all fall due at one instant, the herd. Every
    // Hello let through is held at the gate, the rest are deferred (and wait out their retry-after on
    // the fake clock, which stands still meanwhile): until each host is one or the other.
    h.cp.helloAdmission.resetPeak();
    expect(h.cp.helloAdmission.inFlight).toBe(0);
    const deferredBefore = h.cp.helloAdmission.deferredTotal;
    const deferredSinceHeal = (): number => h.cp.helloAdmission.deferredTotal - deferredBefore;
    gate.close();
    isHealed = true;
    p.heal();
    // Admin calls go straight to the control plane (not through the proxy): one at a time, throughout.
    let adminCalls = 0;
    const adminFailures: unknown[] = [];
    let isOver = false;
    const admin = (async (): Promise<void> => {
      while (!isOver && adminCalls < MAX_ADMIN_CALLS) {
        adminCalls++;
        try {
          const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: ADMIN_PAGE, pageToken: '' });
          expect(listed.hosts).toHaveLength(ADMIN_PAGE);
        } catch (err) {
          adminFailures.push(err);
        }
      }
    })();
    // In steps, not one jump: a host whose last attempt was still being reset by the proxy when it healed
    // schedules its next one only afterwards, on this clock.
    await advanceUntil(h.clock, RECONNECT_MAX_DELAY_MS, () => gate.held + deferredSinceHeal() >= HOSTS, 'every host to be held in its Hello or deferred', HERD_BOUND_MS);
    const heldAtOnce = gate.held;
    const adminCallsWhileHeld = adminCalls;
    gate.open();
    await advanceUntil(
      h.clock,
      25,
      () =>
        hosts.every(({ host }) => host.state === 'connected') &&
        h.cp.connectedHosts === HOSTS &&
        rotatedAfterHeal.size === agentIds.length &&
        h.cp.isSettled(),
      `all ${HOSTS} hosts to resume and their due rotations to be made`,
      HERD_BOUND_MS,
    );
    isOver = true;
    await admin;

    const peak = h.cp.helloAdmission.peakInFlight;
    const deferred = h.cp.helloAdmission.deferredTotal - deferredBefore;
    console.log(
      `hello herd: ${HOSTS} hosts back; at most ${peak} Hellos at once (bound ${MAX_CONCURRENT_HELLOS}); ${deferred} deferred, ${deferrals.length} retry-afters seen by hosts; ${adminCalls} ListHosts answered (${adminCallsWhileHeld} while Hellos were held)`,
    );
    // The bound held, and it was needed: some hosts were told to retry later, and honoured it.
    expect(heldAtOnce).toBeLessThanOrEqual(MAX_CONCURRENT_HELLOS);
    expect(peak).toBeLessThanOrEqual(MAX_CONCURRENT_HELLOS);
    expect(peak).toBeGreaterThan(0);
    expect(deferred).toBeGreaterThan(0);
    expect(deferrals).toHaveLength(deferred);
    // Each waited at least its retry-after, unless its tokens' remaining life bounded the wait.
    for (const { retryInMs, retryAfterMs, capMs } of deferrals) expect(retryInMs).toBeGreaterThanOrEqual(Math.min(retryAfterMs, capMs));
    // Every host resumed (its agent kept), none refused, nothing UNAUTHENTICATED.
    const resumed = h.logs.records().filter((r) => r.msg === 'host connected' && typeof r.sessionId === 'string');
    expect(new Set(resumed.map((r) => r.hostId)).size).toBe(HOSTS);
    for (const { host, agentId } of hosts) expect(host.agentIds()).toEqual(agentId === undefined ? [] : [agentId]);
    expect(refused).toEqual([]);
    expect(unauthenticated).toEqual([]);
    expect(heartbeatsOk).toBeGreaterThan(0);
    // The admin loop was answered every time.
    expect(adminFailures).toEqual([]);
    expect(adminCallsWhileHeld).toBeGreaterThan(0);
    expect(adminCalls).toBeGreaterThan(adminCallsWhileHeld);
  });
});
