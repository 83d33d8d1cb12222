/**
 * Know when you are cut off (issue 13), host side: the expiry check runs every
 * TTL/10 (at most 30 s), so with a 30 s TTL the warning comes while the token
 * still has time left (it used to come after it had expired: the check ran
 * every 30 s whatever the TTL); and every agent call to the control plane
 * carries a deadline no longer than min(heartbeat interval, TTL/10). The TTL
 * and the rest of the rotation policy come in the Welcome.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Welcome } from '../../gen/tether/v1/host.js';
import { advanceUntil } from '../support/advance-until.js';
import { call, Harness } from '../support/harness.js';
import { RawHost } from '../support/raw-host.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const AGENT_TTL_MS = 30_000;
const HEARTBEAT_INTERVAL_MS = 3_000;

describe('host cadence tied to the TTL', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('is told the rotation policy in Welcome: TTLs, clock tolerance and the rotation window', async () => {
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, hostTokenTtlMs: 600_000, clockToleranceMs: 7_000 });
    const h = harness;
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'raw', joinTtlMs: 0 });
    const raw = RawHost.connect(h.target, `Join ${enrolled.joinToken}`);
    try {
      const welcome = (await raw.first((m) => m.welcome !== undefined, 'Welcome')).welcome as Welcome;
      // A token is replaced at iat + TTL·(0.5 + 0.1·u): at least 40 % of its life left.
      expect(welcome.rotation).toEqual({
        agentTokenTtlMs: AGENT_TTL_MS,
        hostTokenTtlMs: 600_000,
        clockToleranceMs: 7_000,
        rotationWindowStart: 0.5,
        rotationWindowWidth: 0.1,
      });
    } finally {
      await raw.close();
    }
    const { host } = await h.startHost('told');
    expect(host.rotationPolicy).toEqual({
      agentTokenTtlMs: AGENT_TTL_MS,
      hostTokenTtlMs: 600_000,
      clockToleranceMs: 7_000,
      rotationWindowStart: 0.5,
      rotationWindowWidth: 0.1,
    });
  });

  it('warns before a 30 s token expires, with the check planned before the Welcome told the TTL', async () => {
    // Rotation off: nothing replaces the token, as for a host the control plane cannot reach.
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, isRotationEnabled: false, heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS });
    const h = harness;
    const { host, hostId } = await h.startHost('cadenced');
    expect(host.rotationPolicy.agentTokenTtlMs).toBe(AGENT_TTL_MS);
    await h.dispatch(host, hostId, 'w1');
    const expiresAtMs = host.agentCredential('w1')?.expiresAtMs ?? 0;
    expect(expiresAtMs - h.clock.now()).toBe(AGENT_TTL_MS);

    const warnings: { atMs: number; lowestTimeToExpiryMs: number }[] = [];
    host.events.on('expiry-warning', (e) => warnings.push({ atMs: h.clock.now(), lowestTimeToExpiryMs: e.lowestTimeToExpiryMs }));
    await advanceUntil(h.clock, 500, () => warnings.length > 0 || h.clock.now() > expiresAtMs + AGENT_TTL_MS, 'an expiry warning');
    const [warning] = warnings;
    expect(warning, 'a warning came at all').toBeDefined();
    // Before the expiry, and with at most a quarter of the TTL left (the threshold) plus one check interval (TTL/10) late.
    expect(warning?.atMs).toBeLessThan(expiresAtMs);
    expect(warning?.lowestTimeToExpiryMs).toBeGreaterThan(0);
    expect(warning?.lowestTimeToExpiryMs).toBeGreaterThanOrEqual(AGENT_TTL_MS * 0.25 - AGENT_TTL_MS / 10);
  });

  it('gives each heartbeat a deadline of at most min(heartbeat interval, TTL/10)', async () => {
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS });
    const h = harness;
    /** What each heartbeat had left of its deadline when its call was made, in ms. */
    const heartbeatDeadlinesMs: number[] = [];
    class RecordingChannel extends grpc.Channel {
      override createCall(method: string, deadline: grpc.Deadline, ...rest: Parameters<grpc.Channel['createCall']> extends [unknown, unknown, ...infer R] ? R : never): ReturnType<grpc.Channel['createCall']> {
        if (method.endsWith('/Heartbeat')) {
          const atMs = deadline instanceof Date ? deadline.getTime() : deadline;
          heartbeatDeadlinesMs.push(atMs - (performance.timeOrigin + performance.now()));
        }
        return super.createCall(method, deadline, ...rest);
      }
    }
    const { host, hostId } = await h.startHost('deadlined', {
      channelFactory: (target, credentials, options, purpose) =>
        purpose === 'agents' ? new RecordingChannel(target, credentials, options) : new grpc.Channel(target, credentials, options),
    });
    await h.dispatch(host, hostId, 'w1');
    const beat = nextEvent<{ isOk: boolean }>(host.events, 'heartbeat', (e) => e.isOk);
    h.clock.advance(HEARTBEAT_INTERVAL_MS);
    await beat;
    await waitUntil(() => heartbeatDeadlinesMs.length > 0, 'a heartbeat call recorded');
    const boundMs = Math.min(HEARTBEAT_INTERVAL_MS, AGENT_TTL_MS / 10);
    for (const leftMs of heartbeatDeadlinesMs) {
      expect(leftMs).toBeGreaterThan(0);
      expect(leftMs).toBeLessThanOrEqual(boundMs);
    }
  });
});
