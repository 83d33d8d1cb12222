import { describe, expect, it } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import { AgentHostEvents } from '../../agent-host/events.js';
import { createHostMetrics } from '../../agent-host/metrics.js';
import { sample } from '../support/promtool.js';

/** A host holding no token yet (never connected): what the metrics read of it. */
function tokenlessHost(): AgentHost {
  const fake = {
    state: 'connecting',
    events: new AgentHostEvents(),
    agentIds: () => [],
    lowestTimeToExpiryMs: () => Infinity,
    clockSkewMs: 0,
    rotationPolicy: { agentTokenTtlMs: 90_000 },
  };
  return fake as unknown as AgentHost;
}

describe('host metrics', () => {
  it('leaves the lowest time-to-expiry absent, not 0, while no token is held (a 0 would fire the expiry alert)', async () => {
    const metrics = createHostMetrics(tokenlessHost());
    try {
      const text = await metrics.registry.metrics();
      expect(text).toContain('# TYPE tether_host_lowest_token_ttl_seconds gauge');
      expect(sample(text, 'tether_host_lowest_token_ttl_seconds')).toBeUndefined();
      expect(sample(text, 'tether_host_agent_token_ttl_seconds')).toBe(90);
    } finally {
      metrics.close();
    }
  });
});
