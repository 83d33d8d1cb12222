/**
 * The host's own credential: replaced down its stream once a third of its life
 * has passed, stored (0600) in the host's data directory before it is
 * acknowledged, and the older generation refused once it is. Time moves on the
 * fake clock shared by the control plane and the host.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentHost } from '../../agent-host/agent-host.js';
import { FileHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { Credential } from '../../gen/tether/v1/common.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { bearer, call, Harness, idleModule } from '../support/harness.js';
import { probeHostConnect } from '../support/host-stream-probe.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const HOST_TTL_MS = 90_000;
const THIRD_MS = HOST_TTL_MS / 3;
const STEP_MS = HOST_TTL_MS / 9;
const LIFETIMES = 3;

describe('host credential rotation', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;
  let dataDir: string | undefined;

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await proxy?.close();
    proxy = undefined;
    if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true });
    dataDir = undefined;
  });

  /** 'accepted' when the control plane takes `token` as a host credential, else the status code. */
  async function verdict(h: Harness, token: string): Promise<'accepted' | grpc.status> {
    const status = await probeHostConnect(h.target, bearer(token));
    return status.code === grpc.status.INVALID_ARGUMENT ? 'accepted' : status.code;
  }

  async function listedGeneration(h: Harness, hostId: string): Promise<number | undefined> {
    const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: 0, pageToken: '' });
    return listed.hosts.find((x) => x.hostId === hostId)?.credentialGeneration;
  }

  async function stored(store: FileHostCredentialStore): Promise<Credential> {
    const credential = await store.load();
    if (credential === undefined) throw new Error('no credential in the data directory');
    return credential;
  }

  it('rotates at each third of its life through three lifetimes, each acknowledged, and reconnects with the newest from disk', async () => {
    harness = await Harness.start({ hostTokenTtlMs: HOST_TTL_MS });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;
    dataDir = mkdtempSync(join(tmpdir(), 'tether-host-data-'));
    const store = new FileHostCredentialStore(dataDir);
    const { host, hostId } = await h.startHost('rotator', { target: p.target, credentialStore: store });
    const joined = await stored(store);
    expect(joined.generation).toBe(1);
    const startMs = joined.issuedAtMs;
    expect(startMs).toBe(h.clock.now());
    await waitUntil(async () => (await verdict(h, joined.token)) === 'accepted', 'the joined credential accepted');

    const byGeneration = new Map<number, Credential>([[1, joined]]);
    for (let elapsedMs = STEP_MS; elapsedMs <= LIFETIMES * HOST_TTL_MS; elapsedMs += STEP_MS) {
      h.clock.advance(STEP_MS);
      const expected = 1 + Math.floor(elapsedMs / THIRD_MS);
      await waitUntil(async () => (await stored(store)).generation === expected, `generation ${expected} on disk at +${elapsedMs} ms`);
      const current = await stored(store);
      if (!byGeneration.has(expected)) {
        byGeneration.set(expected, current);
        // Replaced exactly when a third of the previous one's life had passed, with a full lifetime of its own.
        expect(current.issuedAtMs).toBe(startMs + (expected - 1) * THIRD_MS);
        expect(current.expiresAtMs - current.issuedAtMs).toBe(HOST_TTL_MS);
        // Acknowledged: the previous generation is refused from then on, the new one accepted.
        const previous = byGeneration.get(expected - 1);
        if (previous === undefined) throw new Error(`no generation ${expected - 1} recorded`);
        await waitUntil(async () => (await verdict(h, previous.token)) === grpc.status.UNAUTHENTICATED, `generation ${expected - 1} refused`);
        expect(await verdict(h, current.token)).toBe('accepted');
      }
      // What the host holds never falls below two thirds of a lifetime.
      expect(current.expiresAtMs - h.clock.now()).toBeGreaterThanOrEqual(HOST_TTL_MS - THIRD_MS);
    }
    const newest = 1 + LIFETIMES * 3;
    expect([...byGeneration.keys()]).toEqual(Array.from({ length: newest }, (_, i) => i + 1));
    // The first and the one before the newest are still refused (each was checked as it was superseded). Only
    // two: the control plane's connect limiter refuses a host id unheard after a few failures in a window.
    for (const generation of [1, newest - 1]) {
      const credential = byGeneration.get(generation);
      if (credential === undefined) throw new Error(`no generation ${generation} recorded`);
      expect(await verdict(h, credential.token)).toBe(grpc.status.UNAUTHENTICATED);
    }

    // Cut: the host reconnects with what its data directory holds, which is the newest generation, kept 0600.
    const credentialPath = join(dataDir, 'host-credential.json');
    expect(statSync(credentialPath).mode & 0o777).toBe(0o600);
    expect((await stored(store)).generation).toBe(newest);
    const back = nextEvent<{ hostId: string }>(h.cp.events, 'host-connected', (e) => e.hostId === hostId);
    const lost = nextEvent(host.events, 'disconnected');
    p.cutAll();
    await lost;
    await advanceUntil(h.clock, 50, () => host.state === 'connected', 'the host to reconnect');
    await back;
    expect(statSync(credentialPath).mode & 0o777).toBe(0o600);
    const final = await stored(store);
    expect(final.generation).toBeGreaterThanOrEqual(newest);
    await waitUntil(async () => (await listedGeneration(h, hostId)) === (await stored(store)).generation, 'the control plane and the disk to agree');

    // A new host process on the same data directory needs no join token: the host joined once.
    await host.close();
    const restarted = AgentHost.start({
      target: p.target,
      clock: h.clock,
      logger: h.logs.logger,
      credentialStore: new FileHostCredentialStore(dataDir),
      modules: new Map([['idle', idleModule]]),
    });
    h.hosts.push(restarted);
    await nextEvent(restarted.events, 'connected');
    expect(restarted.hostId).toBe(hostId);
  });

  it('replaces at once a rotation lost with its stream, instead of waiting for the lost one to fall due', async () => {
    harness = await Harness.start({ hostTokenTtlMs: HOST_TTL_MS });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;
    dataDir = mkdtempSync(join(tmpdir(), 'tether-host-data-'));
    const store = new FileHostCredentialStore(dataDir);
    const { host, hostId } = await h.startHost('unlucky', { target: p.target, credentialStore: store });
    const joined = await stored(store);
    await waitUntil(async () => (await verdict(h, joined.token)) === 'accepted', 'the joined credential accepted');

    // The rotation falls due while the link is silent: the control plane issues generation 2 into the void.
    h.clock.advance(THIRD_MS - STEP_MS);
    p.blackhole();
    const issued = nextEvent<{ agentId: string; generation: number; expiresAtMs: number }>(
      h.cp.events,
      'credential-issued',
      (e) => e.agentId === '' && e.generation === 2,
    );
    h.clock.advance(STEP_MS);
    const lostRotation = await issued;
    const lostRotationDueAtMs = lostRotation.expiresAtMs - HOST_TTL_MS + THIRD_MS;
    const lost = nextEvent(host.events, 'disconnected');
    p.cutAll();
    await lost;
    p.heal();
    expect((await stored(store)).generation).toBe(1);

    // The host comes back with generation 1, which is still valid. It must not be left holding it until
    // generation 2 (which it never got) falls due: it is given a fresh one as soon as it is back.
    const fresh = nextEvent<{ generation: number; expiresAtMs: number }>(host.events, 'host-credential');
    await advanceUntil(h.clock, 50, () => host.state === 'connected', 'the host to reconnect');
    const received = await fresh;
    expect(h.clock.now()).toBeLessThan(lostRotationDueAtMs);
    expect(received.generation).toBe(3);
    expect(received.expiresAtMs).toBeGreaterThanOrEqual(lostRotation.expiresAtMs);
    await waitUntil(async () => (await stored(store)).generation === 3, 'generation 3 on disk');
    await waitUntil(async () => (await verdict(h, joined.token)) === grpc.status.UNAUTHENTICATED, 'generation 1 refused once 3 is acknowledged');
    expect(await listedGeneration(h, hostId)).toBe(3);
  });
});
