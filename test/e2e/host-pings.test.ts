/**
 * The control plane's app-level Pings towards each host, now that every
 * session's Pings and credential rotations share one clock wait (a deadline
 * heap) instead of a sleeping loop each: a Ping at once after Welcome, then one
 * per interval on the fake clock, per host; Pongs still measure each host's
 * clock skew; and a session that ends leaves nothing scheduled behind it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ControlMessage } from '../../gen/tether/v1/host.js';
import { call, Harness } from '../support/harness.js';
import { helloEnvelope, RawHostStream } from '../support/raw-host-stream.js';
import { waitUntil } from '../support/wait.js';

const PING_INTERVAL_MS = 10_000;

describe('control-plane pings to each host', () => {
  let harness: Harness | undefined;
  const streams: RawHostStream[] = [];

  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    await harness?.close();
    harness = undefined;
  });

  /** Resolves once the stream answered a Ping of the host's own: everything the control plane sent before it has arrived. */
  const roundTrip = async (raw: RawHostStream, timeMs: number): Promise<void> => {
    raw.send({ ping: { timeMs } });
    await raw.next((m) => m.pong?.pingTimeMs === timeMs, 'Pong to our own Ping');
  };
  const pingsIn = (raw: RawHostStream): number[] => raw.received.flatMap((m: ControlMessage) => (m.ping === undefined ? [] : [m.ping.timeMs]));

  it('pings each host at once and then every interval, measures skew from the Pong, and leaves nothing scheduled once the session ends', async () => {
    harness = await Harness.start({ pingIntervalMs: PING_INTERVAL_MS });
    const h = harness;
    const startMs = h.clock.now();
    expect(h.cp.hostSessionDeadlines).toBe(0);

    const hosts: { raw: RawHostStream; hostId: string }[] = [];
    for (const name of ['a', 'b']) {
      const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name, joinTtlMs: 0 });
      const raw = RawHostStream.open(h.target, `Join ${enrolled.joinToken}`);
      streams.push(raw);
      raw.send(helloEnvelope());
      await raw.next((m) => m.welcome !== undefined, 'Welcome');
      const first = await raw.next((m) => m.ping !== undefined, 'the first Ping');
      expect(first.ping?.timeMs).toBe(startMs);
      hosts.push({ raw, hostId: enrolled.hostId });
    }
    // Each session: its Ping and its credential's rotation.
    await waitUntil(() => h.cp.hostSessionDeadlines === 4, 'both sessions to schedule their Ping and rotation');

    // A Pong from a host whose clock is 5 s ahead (the clock has not moved since the Ping).
    const [a, b] = hosts as [(typeof hosts)[number], (typeof hosts)[number]];
    a.raw.send({ pong: { pingTimeMs: startMs, timeMs: startMs + 5_000 } });
    await roundTrip(a.raw, 1);
    const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: 10, pageToken: '' });
    expect(listed.hosts.find((host) => host.hostId === a.hostId)?.clockSkewMs).toBe(5_000);
    // A Pong for a Ping never sent (or already answered) is ignored.
    a.raw.send({ pong: { pingTimeMs: startMs, timeMs: startMs + 60_000 } });
    await roundTrip(a.raw, 2);
    expect((await call(h.admin.listHosts.bind(h.admin), { pageSize: 10, pageToken: '' })).hosts.find((host) => host.hostId === a.hostId)?.clockSkewMs).toBe(5_000);

    // Not before the interval...
    h.clock.advance(PING_INTERVAL_MS - 1);
    await roundTrip(a.raw, 3);
    await roundTrip(b.raw, 3);
    expect(pingsIn(a.raw)).toEqual([startMs]);
    expect(pingsIn(b.raw)).toEqual([startMs]);
    // ...and at it, to each host; then again one interval after that.
    h.clock.advance(1);
    await a.raw.next((m) => m.ping?.timeMs === startMs + PING_INTERVAL_MS, 'the second Ping (a)');
    await b.raw.next((m) => m.ping?.timeMs === startMs + PING_INTERVAL_MS, 'the second Ping (b)');
    h.clock.advance(PING_INTERVAL_MS);
    await a.raw.next((m) => m.ping?.timeMs === startMs + 2 * PING_INTERVAL_MS, 'the third Ping (a)');
    await b.raw.next((m) => m.ping?.timeMs === startMs + 2 * PING_INTERVAL_MS, 'the third Ping (b)');
    expect(pingsIn(a.raw)).toEqual([startMs, startMs + PING_INTERVAL_MS, startMs + 2 * PING_INTERVAL_MS]);

    // One host goes: its Ping and rotation are unscheduled at once, the other's go on.
    a.raw.close();
    await waitUntil(() => h.cp.hostSessionDeadlines === 2, "a's deadlines unscheduled when its stream ended");
    h.clock.advance(PING_INTERVAL_MS);
    await b.raw.next((m) => m.ping?.timeMs === startMs + 3 * PING_INTERVAL_MS, 'the fourth Ping (b)');
    b.raw.close();
    await waitUntil(() => h.cp.hostSessionDeadlines === 0, 'nothing scheduled once every session ended');
  });
});
