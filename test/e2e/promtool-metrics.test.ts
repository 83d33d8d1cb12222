/**
 * Both binaries' `/metrics` pages, fetched from real servers on 127.0.0.1:0,
 * pass `promtool check metrics` (exit 0, not one lint line), before and after
 * the test drives the system: a dispatch, messages sent and acknowledged, a
 * forced and a due rotation, a clock-skew measurement, an auth failure and a
 * host reconnect, each moving its counter.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import { createHostMetrics } from '../../agent-host/metrics.js';
import { serveMetrics } from '../../common/metrics-http.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import type { FakeClock } from '../support/fake-clock.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { hasPromtool, promtool, sample } from '../support/promtool.js';
import { ScriptedModule } from '../support/scripted-module.js';
import { assertNoSecrets } from '../support/secrets.js';
import { waitUntil } from '../support/wait.js';

const RECONNECT_MAX_DELAY_MS = 50;
const TTL_MS = 60_000;
const PING_INTERVAL_MS = 5_000;

/** Brings a host that just lost its stream back, moving the fake clock past each reconnect wait as it begins. */
async function driveReconnect(host: AgentHost, clock: FakeClock): Promise<void> {
  let waits = 1;
  let advanced = 0;
  const onDisconnected = (): void => void waits++;
  host.events.on('disconnected', onDisconnected);
  try {
    await waitUntil(() => {
      if (host.state === 'connected') return true;
      for (; advanced < waits; advanced++) clock.advance(RECONNECT_MAX_DELAY_MS);
      return false;
    }, 'the host to reconnect');
  } finally {
    host.events.off('disconnected', onDisconnected);
  }
}

/** Asserts `promtool check metrics` takes `text` with exit 0 and no lint output. */
function expectPromtoolClean(text: string, what: string): void {
  const result = promtool(['check', 'metrics'], text);
  expect({ what, status: result.status, output: (result.stdout + result.stderr).trim() }).toEqual({ what, status: 0, output: '' });
}

describe.runIf(hasPromtool())('metrics pages under promtool', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;
  const closers: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    await harness?.close();
    await proxy?.close();
    harness = undefined;
    proxy = undefined;
  });

  it('passes promtool check metrics on both binaries, and the counters move as the system is driven', async () => {
    harness = await Harness.start({ httpAddress: '127.0.0.1:0', agentTokenTtlMs: TTL_MS, pingIntervalMs: PING_INTERVAL_MS });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const scripted = new ScriptedModule();
    const { host, hostId, joinToken } = await h.startHost('scraped', {
      target: `127.0.0.1:${proxy.port}`,
      modules: new Map([['scripted', scripted.module]]),
      reconnectMinDelayMs: 10,
      reconnectMaxDelayMs: RECONNECT_MAX_DELAY_MS,
    });
    const hostMetrics = createHostMetrics(host);
    closers.push(hostMetrics.close);
    const hostServer = await serveMetrics(hostMetrics.registry, '127.0.0.1:0', h.logs.logger);
    closers.push(hostServer.close);
    const scrape = async (port: number): Promise<string> => {
      const response = await fetch(`http://127.0.0.1:${port}/metrics`);
      expect(response.status).toBe(200);
      const text = await response.text();
      assertNoSecrets(text, [h.adminToken, joinToken, 'not-the-admin-token'], 'a metrics page');
      return text;
    };
    const scrapeCp = (): Promise<string> => scrape(h.cp.httpPort);
    const scrapeHost = (): Promise<string> => scrape(hostServer.port);

    // Fresh servers: every family present, histograms empty.
    let cp = await scrapeCp();
    let hostText = await scrapeHost();
    expectPromtoolClean(cp, 'the control plane, fresh');
    expectPromtoolClean(hostText, 'the host, fresh');
    expect(sample(cp, 'tether_rotations_total{reason="due"}')).toBe(0);
    expect(sample(cp, 'tether_agent_token_ttl_seconds')).toBe(TTL_MS / 1000);
    expect(sample(cp, 'tether_agent_lowest_token_ttl_seconds')).toBeUndefined();
    expect(sample(cp, 'tether_last_rotation_timestamp_seconds')).toBe(0);
    expect(sample(cp, 'tether_delivery_latency_seconds_count')).toBe(0);
    expect(sample(cp, 'tether_host_reconnects_total')).toBe(0);
    expect(sample(hostText, 'tether_host_agent_token_ttl_seconds')).toBe(TTL_MS / 1000);

    // A dispatch: the lowest time-to-expiry appears, at most the TTL.
    await h.dispatch(host, hostId, 'scraped-1', 'scripted');
    cp = await scrapeCp();
    expect(sample(cp, 'tether_agent_lowest_token_ttl_seconds')).toBe(TTL_MS / 1000);
    expect(sample(cp, 'tether_rotation_max_per_second')).toBeGreaterThan(0);

    // Messages: appended, delivered, acknowledged; the latency histogram counts each, the outbox empties.
    const payloads = ['one', 'two', 'three'];
    await call(h.admin.sendMessages.bind(h.admin), {
      agentId: 'scraped-1',
      messages: payloads.map((p) => ({ payload: Buffer.from(p), contentType: 'text/plain', idempotencyKey: '' })),
    });
    await waitUntil(async () => sample(await scrapeCp(), 'tether_delivery_latency_seconds_count') === payloads.length, 'three deliveries timed');
    cp = await scrapeCp();
    expect(sample(cp, 'tether_messages_acked_total')).toBe(payloads.length);
    expect(sample(cp, 'tether_outbox_bytes')).toBe(0);
    expect(sample(cp, 'tether_outbox_pending_messages')).toBe(0);

    // A forced rotation.
    await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'scraped-1' });
    cp = await scrapeCp();
    expect(sample(cp, 'tether_rotations_total{reason="forced"}')).toBe(1);
    expect(sample(cp, 'tether_last_rotation_timestamp_seconds')).toBe(h.clock.now() / 1000);

    // Time passes: the forced token falls due (by 0.6 TTL), pings measure the host's skew.
    const applied = (async (): Promise<void> => {
      await waitUntil(async () => (sample(await scrapeHost(), 'tether_host_rotations_applied_total') ?? 0) >= 2, 'the due rotation applied on the host');
    })();
    h.clock.advance(TTL_MS * 0.6 + 1);
    await waitUntil(async () => (sample(await scrapeCp(), 'tether_rotations_total{reason="due"}') ?? 0) >= 1, 'a due rotation counted');
    await applied;
    await waitUntil(async () => (sample(await scrapeCp(), 'tether_clock_skew_seconds_count') ?? 0) >= 1, 'a clock skew measured');
    cp = await scrapeCp();
    // The host shares the fake clock: no skew, in the lowest bucket.
    expect(sample(cp, 'tether_clock_skew_seconds_bucket{le="0.001"}')).toBe(sample(cp, 'tether_clock_skew_seconds_count'));
    expect(sample(cp, 'tether_last_rotation_timestamp_seconds')).toBeGreaterThan(0);

    // An auth failure.
    const stranger = new AdminServiceClient(h.target, grpc.credentials.createInsecure());
    expect(await statusOf(call(stranger.listAgents.bind(stranger), { pageSize: 0, pageToken: '', hostId: '' }, bearer('not-the-admin-token')))).toBe(
      grpc.status.UNAUTHENTICATED,
    );
    stranger.close();

    // The host's stream is cut; it comes back with its host credential: a reconnect.
    proxy.cutAll();
    await waitUntil(() => host.state !== 'connected', 'the host to see its stream cut');
    await driveReconnect(host, h.clock);
    await waitUntil(async () => sample(await scrapeCp(), 'tether_host_reconnects_total') === 1, 'the reconnect counted');

    cp = await scrapeCp();
    hostText = await scrapeHost();
    expect(sample(cp, 'tether_auth_failures_total{principal="admin",reason="wrong-admin-token"}')).toBe(1);
    expect(sample(hostText, 'tether_host_disconnects_total')).toBeGreaterThanOrEqual(1);
    // Every family, now with data in its histograms, still passes.
    expectPromtoolClean(cp, 'the control plane, driven');
    expectPromtoolClean(hostText, 'the host, driven');
  });

  it('a broken page is caught: promtool reports a lint problem', () => {
    // The check above would pass on anything if promtool were silent: it is not.
    const result = promtool(['check', 'metrics'], '# HELP tether_bad_total x\n# TYPE tether_bad_total counter\ntether_bad_total{id="a"} 1\ntether_Bad 2\n');
    expect(result.status).not.toBe(0);
  });
});
