/** The host's expiry-check cadence and call deadline, tied to the agent token TTL. */
import { describe, expect, it } from 'vitest';
import { hostCadence } from '../../agent-host/host-cadence.js';

describe('hostCadence', () => {
  it.each([
    // TTL, heartbeat interval, expiry check, call deadline
    [3_600_000, 30_000, 30_000, 30_000],
    [3_600_000, 10_000, 30_000, 10_000],
    [300_000, 30_000, 30_000, 30_000],
    [60_000, 30_000, 6_000, 6_000],
    [60_000, 3_000, 6_000, 3_000],
    [30_000, 30_000, 3_000, 3_000],
    [10_000, 30_000, 1_000, 1_000],
    // Nothing usable: the old fixed 30 s, and never a busy loop.
    [0, 0, 30_000, 30_000],
    [-1, 30_000, 30_000, 30_000],
    [500, 30_000, 100, 100],
    [60_000, 0, 6_000, 6_000],
  ])('TTL %s ms, heartbeat every %s ms: expiry check every %s ms, calls within %s ms', (ttlMs, heartbeatMs, checkMs, deadlineMs) => {
    expect(hostCadence(ttlMs, heartbeatMs)).toEqual({ expiryCheckIntervalMs: checkMs, callDeadlineMs: deadlineMs });
  });
});
