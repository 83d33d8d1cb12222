/**
 * The steps of a host credential's life under races, driven straight at the
 * store with two callers: two control planes (two stores on one file) or two
 * streams of one host in one process. Every step is a read and then a write
 * conditional on what was read, so no generation is minted twice, the floor of
 * valid generations never falls, and a revoke is never undone.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HostCredentials } from '../../../control-plane/hosts/host-credentials.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { SigningKeyRing } from '../../../control-plane/tokens/signing-keys.js';
import { TokenIssuer } from '../../../control-plane/tokens/token-issuer.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';
import { host } from '../../support/store-records.js';

const TTL_MS = 72 * 3_600_000;

describe('HostCredentials', () => {
  let dir: string;
  let stores: SqliteStore[];
  const clock = new FakeClock();
  const logs = new LogCapture();

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-host-credentials-'));
    stores = [];
  });

  afterEach(async () => {
    for (const store of stores) await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A control plane's view of the one store file: its own store handle, keys and credentials. */
  async function controlPlane(): Promise<{ store: SqliteStore; credentials: HostCredentials }> {
    const store = SqliteStore.open(join(dir, 'tether.db'));
    stores.push(store);
    const keys = await SigningKeyRing.load({ store, clock, logger: logs.logger, maxTokenLifetimeMs: TTL_MS });
    const issuer = new TokenIssuer({ keys, clock, issuer: 'test', audience: 'test' });
    return { store, credentials: new HostCredentials({ store, issuer, clock, hostTokenTtlMs: TTL_MS }) };
  }

  it('never mints one generation twice when two control planes rotate one host at once', async () => {
    const a = await controlPlane();
    const b = await controlPlane();
    await a.store.insertHost(host('h1', { state: 'active', joinSecretHash: null, credentialGeneration: 4, minValidGeneration: 4 }));
    // Both read generation 4 before either writes (each signs in between): the loser must read again.
    const [first, second] = await Promise.all([a.credentials.rotate('h1'), b.credentials.rotate('h1')]);
    const generations = [first?.claims.generation, second?.claims.generation].sort();
    expect(generations).toEqual([5, 6]);
    expect((await a.store.getHost('h1'))?.credentialGeneration).toBe(6);
  });

  it('never mints one generation twice when two streams of one host rotate at once in one process', async () => {
    const { store, credentials } = await controlPlane();
    await store.insertHost(host('h1', { state: 'active', joinSecretHash: null, credentialGeneration: 1, minValidGeneration: 1 }));
    const issued = await Promise.all([credentials.rotate('h1'), credentials.rotate('h1'), credentials.rotate('h1')]);
    expect(issued.map((i) => i?.claims.generation).sort()).toEqual([2, 3, 4]);
    expect(new Set(issued.map((i) => i?.claims.tokenId)).size).toBe(3);
    expect((await store.getHost('h1'))?.credentialGeneration).toBe(4);
  });

  it('rotates nothing for a revoked host, even one revoked while the rotation signed', async () => {
    const a = await controlPlane();
    const b = await controlPlane();
    await a.store.insertHost(host('h1', { state: 'active', joinSecretHash: null, credentialGeneration: 2, minValidGeneration: 2 }));
    const rotating = a.credentials.rotate('h1');
    // Another control plane revokes between the read and the write.
    await b.store.updateHost('h1', { state: 'revoked' });
    expect(await rotating).toBeUndefined();
    expect(await a.store.getHost('h1')).toMatchObject({ state: 'revoked', credentialGeneration: 2 });
  });

  it('never lowers the floor of valid generations, whatever order two acknowledgements land in', async () => {
    const a = await controlPlane();
    const b = await controlPlane();
    await a.store.insertHost(host('h1', { state: 'active', joinSecretHash: null, credentialGeneration: 7, minValidGeneration: 4 }));
    // Both read floor 4; the newer writes first, so an unconditional older write would pull the floor back to 5.
    const [newer, older] = await Promise.all([b.credentials.acknowledge('h1', 6), a.credentials.acknowledge('h1', 5)]);
    expect(newer).toBe(true);
    expect(older).toBe(false);
    expect((await a.store.getHost('h1'))?.minValidGeneration).toBe(6);
    expect(await a.credentials.acknowledge('h1', 5)).toBe(false);
    expect(await a.credentials.acknowledge('h1', 8)).toBe(false);
    expect((await a.store.getHost('h1'))?.minValidGeneration).toBe(6);
  });

  it('keeps a revoke that lands between a join and its Ack', async () => {
    const a = await controlPlane();
    const b = await controlPlane();
    await a.store.insertHost(host('h1'));
    const leased = await a.store.leaseJoinToken('h1', 'session-1', clock.now(), () => false);
    if (leased === undefined) throw new Error('no lease');
    const joined = await a.credentials.issueForJoin(leased, 'session-1');
    expect(joined?.claims.generation).toBe(1);
    await b.store.updateHost('h1', { state: 'revoked', joinSecretHash: null, joinLeaseSessionId: null });
    const completed = await a.credentials.completeJoin('h1', 'session-1');
    expect(completed.isCompleted).toBe(false);
    expect(completed.host?.state).toBe('revoked');
    expect(await a.store.getHost('h1')).toMatchObject({ state: 'revoked' });
  });

  it('issues no join credential once the host was revoked or its join token leased to another stream', async () => {
    const a = await controlPlane();
    const b = await controlPlane();
    await a.store.insertHost(host('h1'));
    await a.store.insertHost(host('h2'));
    const leased1 = await a.store.leaseJoinToken('h1', 'session-1', clock.now(), () => false);
    const leased2 = await a.store.leaseJoinToken('h2', 'session-1', clock.now(), () => false);
    if (leased1 === undefined || leased2 === undefined) throw new Error('no lease');
    await b.store.updateHost('h1', { state: 'revoked', joinSecretHash: null, joinLeaseSessionId: null });
    // The first stream counted as dead on the other control plane, which leased the token again.
    await b.store.leaseJoinToken('h2', 'session-2', clock.now(), () => false);
    expect(await a.credentials.issueForJoin(leased1, 'session-1')).toBeUndefined();
    expect(await a.credentials.issueForJoin(leased2, 'session-1')).toBeUndefined();
    expect(await a.store.getHost('h1')).toMatchObject({ state: 'revoked', credentialGeneration: 0 });
    expect(await a.store.getHost('h2')).toMatchObject({ state: 'enrolled', credentialGeneration: 0, joinLeaseSessionId: 'session-2' });
  });

  it('completes a join: the join token is burnt and the host active', async () => {
    const { store, credentials } = await controlPlane();
    await store.insertHost(host('h1'));
    const leased = await store.leaseJoinToken('h1', 'session-1', clock.now(), () => false);
    if (leased === undefined) throw new Error('no lease');
    await credentials.issueForJoin(leased, 'session-1');
    expect((await credentials.completeJoin('h1', 'session-2')).isCompleted).toBe(false);
    expect((await credentials.completeJoin('h1', 'session-1')).isCompleted).toBe(true);
    expect(await store.getHost('h1')).toMatchObject({ state: 'active', joinSecretHash: null, joinLeaseSessionId: null, credentialGeneration: 1, minValidGeneration: 1 });
  });
});
