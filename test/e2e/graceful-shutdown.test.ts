/**
 * `ControlPlane.close()` (what SIGTERM runs) is graceful: grpc.health.v1 turns
 * NOT_SERVING for "" and every service as soon as it begins, a call already in
 * flight finishes OK, and a stream that never ends is cut once the shutdown
 * grace has passed on the clock, so close returns within that bound.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { service as healthServiceDefinition } from 'grpc-health-check';
import { afterEach, describe, expect, it } from 'vitest';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { ControlPlane } from '../../control-plane/control-plane.js';
import type { Store } from '../../control-plane/store/store.js';
import { databasePath, SqliteStore } from '../../control-plane/store/sqlite-store.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { advanceUntil } from '../support/advance-until.js';
import { FakeClock } from '../support/fake-clock.js';
import { call, Harness, statusOf } from '../support/harness.js';
import { LogCapture } from '../support/log-capture.js';
import { RawHostStream } from '../support/raw-host-stream.js';
import { withinHangBound } from '../support/control-plane-process.js';
import { waitUntil } from '../support/wait.js';

const SERVICES = ['', 'tether.v1.HostService', 'tether.v1.AgentService', 'tether.v1.AdminService'];

/** A grpc.health.v1.Health client, built from grpc-health-check's own descriptors. */
const HealthClient = grpc.makeGenericClientConstructor(healthServiceDefinition, 'Health');

/** One Health/Watch stream: every status it was sent, and how it ended. */
interface Watch {
  statuses: string[];
  ended: Promise<grpc.StatusObject>;
}

function watch(client: grpc.Client, service: string): Watch {
  const statuses: string[] = [];
  const stream = (client as unknown as { watch: (request: { service: string }) => grpc.ClientReadableStream<{ status: string }> }).watch({ service });
  stream.on('data', (response: { status: string }) => statuses.push(response.status));
  stream.on('error', () => undefined);
  const ended = new Promise<grpc.StatusObject>((resolve) => stream.on('status', resolve));
  return { statuses, ended };
}

/** A store (our own interface) whose listAgents, once armed, waits at a gate the test opens: a unary call held in flight. */
function gatedStore(store: SqliteStore): { store: Store; arm: () => void; entered: Promise<void>; open: () => void } {
  let isArmed = false;
  let onEntered: () => void = () => undefined;
  const entered = new Promise<void>((resolve) => (onEntered = resolve));
  let open: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const gated = new Proxy(store, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== 'function') return value;
      if (property === 'listAgents' && isArmed) {
        return async (...args: Parameters<Store['listAgents']>) => {
          onEntered();
          await gate;
          return target.listAgents(...args);
        };
      }
      return (value as (...args: unknown[]) => unknown).bind(target);
    },
  });
  return {
    store: gated,
    arm: () => {
      isArmed = true;
    },
    entered,
    open,
  };
}

describe('graceful shutdown', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    cleanups.length = 0;
  });

  it('reports NOT_SERVING once close begins, and lets a call in flight finish OK before it returns', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tether-shutdown-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const sqlite = SqliteStore.open(databasePath(dir));
    cleanups.push(() => sqlite.close());
    const gated = gatedStore(sqlite);
    const clock = new FakeClock();
    const adminToken = 'admin-token-for-the-shutdown-test';
    // A grace the fake clock never reaches: close can only return because the call finished.
    const cp = await ControlPlane.start({ store: gated.store, clock, logger: new LogCapture().logger, adminToken, address: '127.0.0.1:0', shutdownGraceMs: 3_600_000 });
    cleanups.push(() => cp.close());
    const target = `127.0.0.1:${cp.port}`;
    const admin = new AdminServiceClient(target, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor({ get: () => adminToken })] });
    cleanups.push(() => admin.close());
    const health = new HealthClient(target, grpc.credentials.createInsecure());
    cleanups.push(() => health.close());

    const watches = SERVICES.map((service) => watch(health, service));
    await waitUntil(() => watches.every((w) => w.statuses[0] === 'SERVING'), 'every service to report SERVING');

    gated.arm();
    const inFlight = call(admin.listAgents.bind(admin), { pageSize: 0, pageToken: '', hostId: '' });
    await withinHangBound(gated.entered, 'ListAgents to reach the store');
    let isClosed = false;
    const closing = cp.close().then(() => {
      isClosed = true;
    });

    await waitUntil(() => watches.every((w) => w.statuses.at(-1) === 'NOT_SERVING'), 'every service to report NOT_SERVING');
    // Told, then ended: a Watch does not hold the drain.
    for (const w of watches) expect((await withinHangBound(w.ended, 'the Watch to end')).code).toBe(grpc.status.OK);
    // No new calls: a fresh connection is refused.
    const late = new AdminServiceClient(target, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor({ get: () => adminToken })] });
    cleanups.push(() => late.close());
    expect(await statusOf(call(late.listAgents.bind(late), { pageSize: 0, pageToken: '', hostId: '' }))).toBe(grpc.status.UNAVAILABLE);
    expect(isClosed).toBe(false);

    gated.open();
    const answer = await withinHangBound(inFlight, 'the call in flight to finish');
    expect(answer.agents).toEqual([]);
    await withinHangBound(closing, 'close to return once nothing is in flight');
    expect(clock.now()).toBe(new FakeClock().now());
  });

  describe('with a stream that never ends', () => {
    let harness: Harness | undefined;
    afterEach(async () => {
      await harness?.close();
      harness = undefined;
    });

    it('cuts it once the shutdown grace has passed, so close returns within the bound', async () => {
      const graceMs = 5_000;
      harness = await Harness.start({ shutdownGraceMs: graceMs });
      const h = harness;
      const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'silent', joinTtlMs: 0 });
      // Joined, and then silent: no Hello, so no host session that close would end for it.
      const held = RawHostStream.open(h.target, `Join ${enrolled.joinToken}`);
      cleanups.push(() => held.close());
      await waitUntil(() => h.cp.openHostStreams === 1, 'the stream to be open');

      let isClosed = false;
      const closing = h.cp.close().then(() => {
        isClosed = true;
      });
      const advancedMs = await advanceUntil(h.clock, 1_000, () => isClosed, 'close to return once the grace has passed');
      await closing;
      // Not cut before the grace: the old close cut every stream one microtask after asking them to end.
      expect(advancedMs).toBeGreaterThanOrEqual(graceMs);
      expect((await withinHangBound(held.ended, 'the held stream to be cut')).code).not.toBe(grpc.status.OK);
    });
  });
});
