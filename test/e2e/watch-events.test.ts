/**
 * Lifecycle events (issue 19, Show 1): WatchEvents streams the events of a
 * dispatch, a rotation, a drain, a lost host and a stop, in order; a watcher
 * that comes back with its last id misses nothing and sees nothing twice; a
 * pruned id is refused with OUT_OF_RANGE naming the oldest kept; a watcher that
 * never reads is cut, told, and holds no more than its bound meanwhile.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { ANY_EVENT } from '../../control-plane/store/event-store.js';
import { WatchEventsRequest, WatchEventsResponse, type AdminServiceClient, type Event } from '../../gen/tether/v1/admin.js';
import { advanceUntil } from '../support/advance-until.js';
import { RunningBinary } from '../support/control-plane-cli.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness } from '../support/harness.js';
import { UnreadGrpcStream } from '../support/unread-grpc-stream.js';
import { waitUntil } from '../support/wait.js';
import { freePort } from '../support/free-port.js';

const AGENT_TTL_MS = 60_000;
const TOLERANCE_MS = 1_000;
const SPEC = { kind: 'module', module: 'idle', command: '', args: [], config: '' };

/** A WatchEvents stream read into an array, with its final status. */
interface Watch {
  events: Event[];
  status: Promise<grpc.StatusObject>;
  stream: grpc.ClientReadableStream<{ event?: Event | undefined }>;
  cancel: () => void;
}

function watch(client: AdminServiceClient, request: Partial<WatchEventsRequest> = {}): Watch {
  const stream = client.watchEvents({ agentId: '', hostId: '', kinds: [], ...request });
  const events: Event[] = [];
  const status = new Promise<grpc.StatusObject>((resolve) => stream.on('status', resolve));
  // An error event also ends it (its status comes with it); without a listener it would throw.
  stream.on('error', () => {});
  stream.on('data', (m: { event?: Event }) => void (m.event !== undefined && events.push(m.event)));
  return { events, status, stream, cancel: () => stream.cancel() };
}

/** `kind` plus its agent or host, the way the order assertions name events. */
function label(e: Event): string {
  return [e.kind, e.agentId, e.agentId === '' ? e.hostId : '', e.reason].filter((part) => part !== '').join(' ');
}

/** Whether `wanted` appears in `seen` in that order (other events may come between). */
function inOrder(seen: readonly string[], wanted: readonly string[]): boolean {
  let i = 0;
  for (const s of seen) if (s === wanted[i]) i++;
  return i === wanted.length;
}

describe('WatchEvents', () => {
  let harness: Harness | undefined;
  const proxies: FaultProxy[] = [];
  const lazies: UnreadGrpcStream[] = [];
  const binaries: RunningBinary[] = [];

  afterEach(async () => {
    for (const lazy of lazies.splice(0)) lazy.close();
    for (const binary of binaries.splice(0)) await binary.stop();
    for (const proxy of proxies.splice(0)) await proxy.close();
    await harness?.close();
    harness = undefined;
  });

  it('streams a dispatch, a rotation, a drain, a lost host and a stop, in order, with increasing ids', async () => {
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, clockToleranceMs: TOLERANCE_MS, pingIntervalMs: 2_000 });
    const h = harness;
    const w = watch(h.admin);
    await waitUntil(() => h.cp.eventWatchers.count === 1, 'the watcher registered');
    const a = await h.startHost('a');
    // An ensured agent (movable by a drain), placed on a: the only host yet. Then a forced rotation.
    await call(h.admin.ensureAgent.bind(h.admin), { agentId: 'mover', name: '', hostId: '', hostLabels: [], spec: SPEC, update: false });
    await waitUntil(() => w.events.some((e) => e.kind === 'agent.started' && e.agentId === 'mover'), 'mover started');
    expect(a.host.agentIds()).toContain('mover');
    await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'mover' });
    const b = await h.startHost('b');
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    const c = await h.startHost('c', { target: proxy.target });
    // A drain of a, with c cordoned: mover moves to b.
    await call(h.admin.drainHost.bind(h.admin), { hostId: c.hostId, waitMs: 0, watch: false });
    await call(h.admin.drainHost.bind(h.admin), { hostId: a.hostId, waitMs: 10_000, watch: false });
    await waitUntil(() => w.events.some((e) => e.kind === 'host.drained' && e.hostId === a.hostId), 'a drained');
    expect(b.host.agentIds()).toContain('mover');

    // A lost host: c, with an agent of its own, cut off past the grace.
    await call(h.admin.uncordonHost.bind(h.admin), { hostId: c.hostId });
    await call(h.admin.dispatchAgent.bind(h.admin), { agentId: 'stuck', name: '', hostId: c.hostId, hostLabels: [], spec: SPEC });
    await waitUntil(() => w.events.some((e) => e.kind === 'agent.started' && e.agentId === 'stuck'), 'stuck started on c');
    proxy.blackhole();
    proxy.cutAll();
    await waitUntil(() => h.cp.connectedHosts === 2, 'c gone');
    await advanceUntil(h.clock, 1_000, () => w.events.some((e) => e.kind === 'host.lost'), 'c lost');

    // A stop.
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'mover', reason: 'done' });
    await waitUntil(() => w.events.some((e) => e.kind === 'agent.stopped'), 'mover stopped');

    const seen = w.events.map(label);
    const wanted = [
      `host.connected ${a.hostId}`,
      'agent.placed mover',
      'agent.started mover',
      'credential.rotated mover forced',
      'agent.placed mover',
      'agent.moved mover',
      `host.drained ${a.hostId}`,
      'agent.started stuck',
      `host.disconnected ${c.hostId}`,
      `host.lost ${c.hostId}`,
      'agent.lost stuck',
      'agent.stopped mover',
    ];
    expect(inOrder(seen, wanted), seen.join('\n')).toBe(true);
    // The move went a → b, and the stop reason is kept.
    expect(w.events.find((e) => e.kind === 'agent.moved')).toMatchObject({ agentId: 'mover', hostId: b.hostId });
    expect(w.events.filter((e) => e.kind === 'agent.placed' && e.agentId === 'mover').map((e) => e.hostId)).toEqual([a.hostId, b.hostId]);
    expect(w.events.find((e) => e.kind === 'agent.stopped')?.detail).toBe('done');
    // Ids increase by one: nothing recorded was held back from a live watcher (it watched from before the first).
    const ids = w.events.map((e) => e.id);
    expect(ids).toEqual(ids.map((_, i) => (ids[0] ?? 0) + i));
    // No event carries a token or anything JWT-shaped.
    expect(JSON.stringify(w.events)).not.toMatch(/eyJ/);

    // A filter: one agent's events only, kinds narrowed, from the start of what is kept.
    const only = watch(h.admin, { agentId: 'mover', kinds: ['agent.placed', 'agent.stopped'], afterEventId: 0 });
    await waitUntil(() => only.events.length === 3, 'the filtered catch-up');
    expect(only.events.map(label)).toEqual(['agent.placed mover', 'agent.placed mover', 'agent.stopped mover']);
    only.cancel();
    w.cancel();
    expect((await w.status).code).toBe(grpc.status.CANCELLED);
    await waitUntil(() => h.cp.eventWatchers.count === 0, 'watchers gone');
  });

  it('a watcher that comes back with its last id gets every event once, while events keep coming', async () => {
    harness = await Harness.start();
    const h = harness;
    const a = await h.startHost('a');
    for (const agentId of ['r1', 'r2', 'r3']) await h.dispatch(a.host, a.hostId, agentId);
    await h.cp.eventLog.flush();
    const startId = h.cp.eventLog.lastId;
    const all = watch(h.admin, { afterEventId: startId });
    const first = watch(h.admin, { afterEventId: startId });
    const rotate = (i: number): Promise<unknown> => call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: `r${(i % 3) + 1}` });
    for (let i = 0; i < 30; i++) await rotate(i);
    await waitUntil(() => first.events.length >= 30, 'the first watcher to see 30 rotations');
    first.cancel();
    await first.status;
    const lastSeen = first.events[first.events.length - 1]?.id ?? 0;
    // Events while it is away, and while it comes back: rotations not awaited race its catch-up read.
    for (let i = 30; i < 60; i++) await rotate(i);
    const racing = Array.from({ length: 60 }, (_, i) => rotate(60 + i));
    const second = watch(h.admin, { afterEventId: lastSeen });
    await Promise.all(racing);
    for (let i = 120; i < 150; i++) await rotate(i);
    await h.cp.eventLog.flush();
    const endId = h.cp.eventLog.lastId;
    await waitUntil(() => all.events.at(-1)?.id === endId && second.events.at(-1)?.id === endId, 'both watchers at the last event');
    const resumed = [...first.events, ...second.events].map((e) => e.id);
    expect(all.events.map((e) => e.id)).toEqual(Array.from({ length: endId - startId }, (_, i) => startId + 1 + i));
    expect(resumed).toEqual(all.events.map((e) => e.id));
    expect(all.events.filter((e) => e.kind === 'credential.rotated' && e.reason === 'forced')).toHaveLength(150);
    all.cancel();
    second.cancel();
  });

  it('refuses a pruned id with OUT_OF_RANGE naming the oldest kept, and an id past the newest', async () => {
    harness = await Harness.start({ eventRetentionCount: 5 });
    const h = harness;
    const a = await h.startHost('a');
    await h.dispatch(a.host, a.hostId, 'p1');
    for (let i = 0; i < 10; i++) await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'p1' });
    await h.cp.eventLog.flush();
    const lastId = h.cp.eventLog.lastId;
    expect(lastId).toBeGreaterThan(10);
    // Pruned on the clock: at most a minute apart.
    await advanceUntil(h.clock, 10_000, async () => (await h.store.eventIdRange()).firstId > 1, 'events pruned');
    const { firstId } = await h.store.eventIdRange();
    expect(firstId).toBe(lastId - 4);

    const pruned = watch(h.admin, { afterEventId: 1 });
    const status = await pruned.status;
    expect(status.code).toBe(grpc.status.OUT_OF_RANGE);
    expect(status.details).toContain(`the oldest event kept is ${firstId}`);
    expect(pruned.events).toEqual([]);
    const future = await watch(h.admin, { afterEventId: lastId + 1 }).status;
    expect(future.code).toBe(grpc.status.OUT_OF_RANGE);
    // From just before the oldest kept: every kept event.
    const kept = watch(h.admin, { afterEventId: firstId - 1 });
    await waitUntil(() => kept.events.length === 5, 'the five kept events');
    expect(kept.events.map((e) => e.id)).toEqual([firstId, firstId + 1, firstId + 2, firstId + 3, firstId + 4]);
    kept.cancel();
    // An unknown kind is a mistake, said as such.
    const unknown = await watch(h.admin, { kinds: ['agent.exploded'] }).status;
    expect(unknown.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(unknown.details).toContain('agent.failed');
  });

  it('cuts a watcher that never reads, tells it RESOURCE_EXHAUSTED, and holds no more than its bound meanwhile', async () => {
    const bound = 64;
    harness = await Harness.start({ maxEventsQueuedPerWatcher: bound });
    const h = harness;
    const a = await h.startHost('a');
    await h.dispatch(a.host, a.hostId, 'busy');
    await h.cp.eventLog.flush();
    // Over plain HTTP/2 and never read, so flow control holds the server back (a grpc-js client would read
    // into its own memory anyway).
    const lazy = UnreadGrpcStream.open(h.target, '/tether.v1.AdminService/WatchEvents', WatchEventsRequest.encode({ agentId: '', hostId: '', kinds: [] }).finish(), {
      authorization: `Bearer ${h.adminToken}`,
    });
    lazies.push(lazy);
    const reader = watch(h.admin);
    await waitUntil(() => h.cp.eventWatchers.count === 2, 'both watchers registered');
    // Events until the lazy watcher's stream fills and its queue passes the bound (bounded in count), a few
    // at a time, the reader keeping up: so only not reading gets a watcher cut.
    let made = 0;
    for (let round = 0; round < 2_000 && h.cp.eventWatchers.cutTotal === 0; round++) {
      for (let i = 0; i < 8; i++, made++) {
        h.cp.eventLog.record({ kind: 'agent.pending', agentId: 'busy', hostId: a.hostId, incarnation: 1, generation: 0, keyId: '', reason: '', detail: `round ${round} event ${i}: ${'x'.repeat(200)}` });
      }
      await h.cp.eventLog.flush();
      await waitUntil(() => reader.events.at(-1)?.id === h.cp.eventLog.lastId, 'the reader keeping up');
    }
    expect(h.cp.eventWatchers.cutTotal).toBe(1);
    // The lazy one's queue filled to its bound, and no further: then it was cut.
    expect(h.cp.eventWatchers.peakQueued).toBe(bound);
    expect(h.cp.eventWatchers.count).toBe(1);
    const metrics = await h.cp.metrics.metrics();
    expect(metrics).toMatch(/^tether_event_watchers_cut_total 1$/m);
    expect(metrics).toMatch(/^tether_event_watchers 1$/m);
    // The reader was never cut and has every rotation.
    await h.cp.eventLog.flush();
    await waitUntil(() => reader.events.at(-1)?.id === h.cp.eventLog.lastId, 'the reader at the last event');
    expect(reader.events.filter((e) => e.kind === 'agent.pending' && e.agentId === 'busy')).toHaveLength(made);
    // When the lazy one reads at last: what was in flight, then why it was cut.
    const end = await lazy.readAll();
    expect(end.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(end.details).toMatch(/fell \d+ events behind .*after_event_id/);
    const late = end.messages.map((m) => WatchEventsResponse.decode(m).event?.id ?? 0);
    expect(late.length).toBeGreaterThan(0);
    expect(late.length).toBeLessThan(made);
    expect(late).toEqual(reader.events.slice(0, late.length).map((e) => e.id));
    reader.cancel();
    await waitUntil(() => h.cp.eventWatchers.count === 0, 'no watcher left');
  });

  it('`control-plane watch` resumes on its own from its last id when the control plane restarts: every event once', async () => {
    const port = await freePort();
    harness = await Harness.start({ address: `127.0.0.1:${port}` });
    const h = harness;
    const a = await h.startHost('a');
    await h.dispatch(a.host, a.hostId, 'w1');
    await h.cp.eventLog.flush();
    const before = h.cp.eventLog.lastId;
    const cli = RunningBinary.start('control-plane', ['watch', '--after-id', '0', '-o', 'jsonl'], { PATH: process.env.PATH ?? '', TETHER_SERVER: h.target, TETHER_ADMIN_TOKEN: h.adminToken });
    binaries.push(cli);
    await cli.waitForOutput(`{"id":${before},`, 'the CLI to print the events so far');
    await h.stopControlPlane();
    await h.startControlPlane();
    await advanceUntil(h.clock, 10, () => h.cp.connectedHosts === 1, 'a back');
    for (let i = 0; i < 3; i++) await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'w1' });
    await h.cp.eventLog.flush();
    const lastId = h.cp.eventLog.lastId;
    await cli.waitForOutput(`{"id":${lastId},`, 'the CLI to print the events after the restart');
    const printed = cli.stdout.trimEnd().split('\n').map((line) => (JSON.parse(line) as { id: number }).id);
    const kept = (await h.store.listEvents(0, lastId, ANY_EVENT, 10_000)).map((e) => e.id);
    expect(kept.length).toBeGreaterThan(before);
    expect(printed).toEqual(kept);
    expect(cli.stderr).toMatch(/resuming after event \d+/);
    expect(cli.stdout.match(/"reason":"forced"/g)).toHaveLength(3);
  });
});
