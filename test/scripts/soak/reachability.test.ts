import { describe, expect, it } from 'vitest';
import { Reachability } from '../../../scripts/soak/reachability.js';

const TTL_MS = 60_000;
const GRACE_MS = 20_000;

describe('soak Reachability: 401s are excused by the fault schedule, never by what was observed', () => {
  it('does not excuse a 401 because the host stayed disconnected long after a short outage', () => {
    const reach = new Reachability(TTL_MS, GRACE_MS, 0);
    reach.setStreamUp(true, 1_000);
    // The control plane is down 15 s (< TTL/3), but the host stays away 70 s: its own fault.
    reach.setControlPlaneDown(true, 10_000);
    reach.setStreamUp(false, 10_000);
    reach.setControlPlaneDown(false, 25_000);
    reach.setStreamUp(true, 80_000);
    expect(reach.isExcused(50_000)).toBe(false);
    expect(reach.isExcused(79_000)).toBe(false);
    expect(reach.longestStreamDownMs(90_000)).toBe(70_000);
    expect(reach.longestScheduledOutageMs(90_000)).toBe(15_000);
  });

  it('excuses a partition longer than TTL/3 from TTL/3 into it until the grace after it heals, and no later', () => {
    const reach = new Reachability(TTL_MS, GRACE_MS, 0);
    reach.setBlackholed(true, 100_000);
    expect(reach.isExcused(110_000)).toBe(false);
    expect(reach.isExcused(121_000)).toBe(true);
    reach.setBlackholed(false, 170_000);
    expect(reach.isExcused(119_000)).toBe(false);
    expect(reach.isExcused(165_000)).toBe(true);
    expect(reach.isExcused(189_000)).toBe(true);
    expect(reach.isExcused(191_000)).toBe(false);
  });

  it('never excuses anything for a scheduled outage shorter than TTL/3', () => {
    const reach = new Reachability(TTL_MS, GRACE_MS, 0);
    reach.setControlPlaneDown(true, 0);
    reach.setControlPlaneDown(false, 19_000);
    for (const atMs of [5_000, 18_000, 19_500, 30_000]) expect(reach.isExcused(atMs)).toBe(false);
  });
});

describe('Reachability.wasInLongOutage (where a self-fence is excused)', () => {
  it('is true inside an outage longer than TTL/3, from its start, and false in a short one or outside', () => {
    const reach = new Reachability(60_000, 20_000, 0);
    reach.setBlackholed(true, 1_000);
    reach.setBlackholed(false, 16_000); // 15 s: shorter than TTL/3
    reach.setBlackholed(true, 50_000);
    expect(reach.wasInLongOutage(60_000, 60_000)).toBe(false); // 10 s in, still going: not yet long
    expect(reach.wasInLongOutage(68_000, 121_000)).toBe(true); // still going at the end, 71 s long
    reach.setBlackholed(false, 121_000);
    expect(reach.wasInLongOutage(68_000, 200_000)).toBe(true);
    expect(reach.wasInLongOutage(10_000, 200_000)).toBe(false);
    expect(reach.wasInLongOutage(130_000, 200_000)).toBe(false);
    // Long after it ended (past any excuse of a 401), it was still a long outage.
    reach.setBlackholed(true, 900_000);
    reach.setBlackholed(false, 901_000);
    expect(reach.wasInLongOutage(68_000, 1_000_000)).toBe(true);
  });
});
