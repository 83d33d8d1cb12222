/**
 * Ping/Pong measures each host's clock skew and it is reported: by the control
 * plane per host (ListHosts), and by the host itself. Each host runs on the
 * shared fake clock plus an offset of its own, and the fake clock stands still
 * between a ping and its pong, so the midpoint estimate is exact.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { call, Harness } from '../support/harness.js';
import { OffsetClock } from '../support/offset-clock.js';
import { waitUntil } from '../support/wait.js';

describe('clock skew', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('reports each host with the offset of its clock from the control plane', async () => {
    harness = await Harness.start();
    const h = harness;
    // Within the default 30 s tolerance, so both hosts' tokens are accepted as usual.
    const ahead = await h.startHost('ahead', { clock: new OffsetClock(h.clock, 7_000) });
    const behind = await h.startHost('behind', { clock: new OffsetClock(h.clock, -4_250) });
    const reported = async (): Promise<Map<string, number>> => {
      const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: 0, pageToken: '' });
      return new Map(listed.hosts.map((host) => [host.hostId, host.clockSkewMs]));
    };
    await waitUntil(async () => {
      const skews = await reported();
      return skews.get(ahead.hostId) === 7_000 && skews.get(behind.hostId) === -4_250;
    }, 'ListHosts to report each host with its offset');
    // The host measures the same thing from its side: its clock minus the control plane's.
    await waitUntil(() => ahead.host.clockSkewMs === 7_000 && behind.host.clockSkewMs === -4_250, 'each host to measure its own offset');
    expect(await reported()).toEqual(new Map([[ahead.hostId, 7_000], [behind.hostId, -4_250]]));
  });
});
