/**
 * The agent host's Prometheus metrics, served over HTTP on 127.0.0.1:0 as
 * `agent-host --metrics-listen` serves them: connection, agents, the lowest
 * time-to-expiry (what to alert on), heartbeats by result, disconnects. Labels
 * are fixed words; nothing token-shaped is ever in the text.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { serveMetrics } from '../../common/metrics-http.js';
import { createHostMetrics } from '../../agent-host/metrics.js';
import { Harness } from '../support/harness.js';
import { assertNoSecrets } from '../support/secrets.js';
import { nextEvent, waitUntil } from '../support/wait.js';

/** One sample's value from Prometheus text (`name` with its labels, as printed), or undefined if absent. */
function sample(text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

describe('agent host metrics', () => {
  let harness: Harness | undefined;
  const closers: (() => Promise<void> | void)[] = [];

  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    await harness?.close();
    harness = undefined;
  });

  it('serves connection, agents, lowest time-to-expiry and heartbeats by result', async () => {
    harness = await Harness.start({ agentTokenTtlMs: 60_000 });
    const h = harness;
    const { host, hostId } = await h.startHost('measured');
    const metrics = createHostMetrics(host);
    closers.push(metrics.close);
    const server = await serveMetrics(metrics.registry, '127.0.0.1:0', h.logs.logger);
    closers.push(server.close);
    const scrape = async (): Promise<string> => {
      const response = await fetch(`http://127.0.0.1:${server.port}/metrics`);
      expect(response.status).toBe(200);
      const text = await response.text();
      assertNoSecrets(text, [h.adminToken], 'the host metrics');
      return text;
    };

    let text = await scrape();
    expect(sample(text, 'tether_host_connected')).toBe(1);
    expect(sample(text, 'tether_host_agents')).toBe(0);
    // Only the host's own credential is held so far.
    expect(sample(text, 'tether_host_lowest_token_ttl_seconds')).toBe(host.lowestTimeToExpiryMs() / 1000);

    for (const agentId of ['m-1', 'm-2']) await h.dispatch(host, hostId, agentId);
    const beats = nextEvent<{ agentId: string; isOk: boolean }>(host.events, 'heartbeat', (e) => e.agentId === 'm-2' && e.isOk);
    h.clock.advance(3_000);
    await beats;
    await waitUntil(async () => (sample(await scrape(), 'tether_host_heartbeats_total{result="ok"}') ?? 0) >= 2, 'two ok heartbeats counted');
    text = await scrape();
    expect(sample(text, 'tether_host_agents')).toBe(2);
    // The agents' tokens (60 s) expire long before the host's: the gauge follows the soonest.
    const lowest = sample(text, 'tether_host_lowest_token_ttl_seconds') ?? Infinity;
    expect(lowest).toBe(host.lowestTimeToExpiryMs() / 1000);
    expect(lowest).toBeLessThanOrEqual(60);
    expect(sample(text, 'tether_host_heartbeats_total{result="unauthenticated"}')).toBe(0);
    expect(sample(text, 'tether_host_disconnects_total')).toBe(0);

    // The control plane goes away: the gauge and the counter say so.
    const gone = nextEvent(host.events, 'disconnected');
    await h.stopControlPlane();
    await gone;
    text = await scrape();
    expect(sample(text, 'tether_host_connected')).toBe(0);
    expect(sample(text, 'tether_host_disconnects_total')).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'tether_host_heartbeats_total{result="unauthenticated"}')).toBe(0);
    await h.startControlPlane();

    expect((await fetch(`http://127.0.0.1:${server.port}/other`)).status).toBe(404);
  });
});
