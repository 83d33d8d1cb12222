import { afterEach, describe, expect, it } from 'vitest';
import { Harness } from '../support/harness.js';
import { nextEvent } from '../support/wait.js';

describe('a host cut off from the control plane', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('warns, in its log and as an event, once its lowest token time-to-expiry falls below a quarter of the TTL', async () => {
    harness = await Harness.start({ agentTokenTtlMs: 60_000, isRotationEnabled: false });
    const { host, hostId } = await harness.startHost('lonely', { pingIntervalMs: 5_000 });
    await harness.dispatch(host, hostId, 'w1');
    const expiresAtMs = host.agentCredential('w1')?.expiresAtMs ?? 0;
    expect(expiresAtMs).toBeGreaterThan(harness.clock.now());

    // With rotation off nothing replaces the token: time alone brings it near expiry.
    harness.clock.advance(40_000);
    expect(host.lowestTimeToExpiryMs()).toBe(expiresAtMs - harness.clock.now());
    const warned = nextEvent<{ lowestTimeToExpiryMs: number }>(host.events, 'expiry-warning');
    harness.clock.advance(6_000);
    const warning = await warned;
    expect(warning.lowestTimeToExpiryMs).toBeLessThan(15_000);
    expect(warning.lowestTimeToExpiryMs).toBeGreaterThan(0);
    expect(harness.logs.records().some((r) => r.msg === 'a token is close to expiry: is the control plane reachable?' && r.level === 40)).toBe(true);
  });
});
