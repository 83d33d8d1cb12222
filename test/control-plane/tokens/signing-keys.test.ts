/**
 * The key ring's lifecycle on a real SQLite store and the fake clock: a standby
 * always published, promoted only once it has been in the JWKS longer than the
 * JWKS cache lifetime; one signer even when rotations race over the same store;
 * private halves gone as soon as a key stops signing; public halves pruned once
 * the last token is expired; revocation.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeProtectedHeader } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '../../../common/errors.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { JWKS_MAX_AGE_MS, SigningKeyRing } from '../../../control-plane/tokens/signing-keys.js';
import { TokenIssuer } from '../../../control-plane/tokens/token-issuer.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';
import { waitUntil } from '../../support/wait.js';

const MAX_TOKEN_LIFETIME_MS = 120_000;

describe('SigningKeyRing', () => {
  let dir: string;
  let clock: FakeClock;
  const stores: SqliteStore[] = [];
  const rings: SigningKeyRing[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-keys-'));
    clock = new FakeClock();
  });

  afterEach(async () => {
    for (const ring of rings.splice(0)) await ring.close();
    for (const store of stores.splice(0)) await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A store handle on the test's one database file (several handles: several control planes). */
  function openStore(): SqliteStore {
    const store = SqliteStore.open(join(dir, 'tether.db'));
    stores.push(store);
    return store;
  }

  async function load(store: SqliteStore = openStore()): Promise<SigningKeyRing> {
    const ring = await SigningKeyRing.load({ store, clock, logger: new LogCapture().logger, maxTokenLifetimeMs: MAX_TOKEN_LIFETIME_MS });
    rings.push(ring);
    return ring;
  }

  const jwksKids = (ring: SigningKeyRing): string[] => ring.jwks(clock.now()).keys.map((key) => key.kid ?? '').sort();
  const states = (ring: SigningKeyRing): [string, string][] => ring.list().map((key) => [key.kid, key.state]);

  it('publishes a standby from the start, next to the signer, and keeps both across a restart', async () => {
    const ring = await load();
    const signer = ring.active().kid;
    const standby = ring.list().find((key) => key.state === 'standby');
    expect(standby).toBeDefined();
    expect(states(ring)).toHaveLength(2);
    expect(states(ring)).toEqual(
      expect.arrayContaining([
        [signer, 'signing'],
        [standby?.kid, 'standby'],
      ]),
    );
    expect(jwksKids(ring)).toEqual([signer, standby?.kid].sort());
    const again = await load();
    expect(states(again)).toEqual(states(ring));
  });

  it('promotes on rotate a key that was in the JWKS longer than its cache lifetime before its first signature, and refuses while it has not been', async () => {
    const ring = await load();
    const issuer = new TokenIssuer({ keys: ring, clock, issuer: 'iss', audience: 'aud' });
    // When each kid was first seen in the JWKS, polled as a cache would (here: at every step of the clock).
    const firstPublishedMs = new Map<string, number>();
    const observe = (): void => {
      for (const kid of jwksKids(ring)) if (!firstPublishedMs.has(kid)) firstPublishedMs.set(kid, clock.now());
    };
    observe();
    const standbyKid = ring.list().find((key) => key.state === 'standby')?.kid ?? '';
    // Too soon: the standby has just been published.
    clock.advance(JWKS_MAX_AGE_MS);
    observe();
    await expect(ring.rotate()).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(ring.active().kid).not.toBe(standbyKid);

    clock.advance(1);
    observe();
    const rotation = await ring.rotate();
    expect(rotation.kid).toBe(standbyKid);
    const firstSignatureMs = clock.now();
    const token = (await issuer.issue({ kind: 'host', subject: 'h1', ttlMs: 60_000, generation: 1 })).token;
    expect(decodeProtectedHeader(token).kid).toBe(rotation.kid);
    expect(firstSignatureMs - (firstPublishedMs.get(rotation.kid) ?? Infinity)).toBeGreaterThan(JWKS_MAX_AGE_MS);

    // The old signer verifies only; a fresh standby is published; keys ls shows each state with its times.
    expect(ring.list().find((key) => key.kid === rotation.retiredKid)).toMatchObject({
      state: 'verifying-only',
      retiredAtMs: firstSignatureMs,
      verifyUntilMs: firstSignatureMs + MAX_TOKEN_LIFETIME_MS,
    });
    expect(ring.list().find((key) => key.kid === rotation.kid)).toMatchObject({ state: 'signing', signingSinceMs: firstSignatureMs });
    expect(ring.list().find((key) => key.kid === rotation.standbyKid)).toMatchObject({ state: 'standby', createdAtMs: firstSignatureMs, signingSinceMs: null });
    expect(jwksKids(ring)).toEqual([rotation.retiredKid, rotation.kid, rotation.standbyKid].sort());
    // The next rotation waits for the new standby's turn.
    await expect(ring.rotate()).rejects.toThrow(/JWKS cache lifetime/);
  });

  it('leaves exactly one signer when two control planes rotate at once over the same store; every other key signed before is retired with a verify-until', async () => {
    const first = await load();
    const second = await load(openStore());
    clock.advance(JWKS_MAX_AGE_MS + 1);
    const outcomes = await Promise.allSettled([first.rotate(), second.rotate()]);
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
    expect(outcomes.filter((o) => o.status === 'rejected').map((o) => (o).reason)).toEqual([expect.any(FailedPreconditionError)]);

    const keys = await openStore().listSigningKeys();
    expect(keys.filter((key) => key.state === 'signing')).toHaveLength(1);
    expect(keys.filter((key) => key.state === 'standby')).toHaveLength(1);
    const others = keys.filter((key) => key.state !== 'signing' && key.state !== 'standby');
    expect(others.length).toBeGreaterThanOrEqual(1);
    for (const key of others) expect(key).toMatchObject({ state: 'verifying-only', privateJwk: null, verifyUntilMs: expect.any(Number) });
  });

  it('drops a key’s private half as soon as it stops signing, and its public half on the clock once its last token has expired', async () => {
    const store = openStore();
    const ring = await load(store);
    ring.start();
    clock.advance(JWKS_MAX_AGE_MS + 1);
    const rotation = await ring.rotate();
    const retired = (await store.listSigningKeys()).find((key) => key.kid === rotation.retiredKid);
    expect(retired).toMatchObject({ state: 'verifying-only', privateJwk: null });

    // Up to its verify-until it is published; the pruner deletes it then, with nothing but the clock moving.
    clock.advance(rotation.retiredVerifyUntilMs - clock.now() - 1);
    expect(jwksKids(ring)).toContain(rotation.retiredKid);
    expect((await store.listSigningKeys()).map((key) => key.kid)).toContain(rotation.retiredKid);
    clock.advance(1);
    await waitUntil(async () => !(await store.listSigningKeys()).some((key) => key.kid === rotation.retiredKid), 'the retired key pruned');
    expect(jwksKids(ring)).toEqual([rotation.kid, rotation.standbyKid].sort());
  });

  it('revokes the signer: the standby signs at once, a new standby is published, the revoked key leaves the JWKS and loses its private half', async () => {
    const store = openStore();
    const ring = await load(store);
    const revokedKid = ring.active().kid;
    const standbyKid = ring.list().find((key) => key.state === 'standby')?.kid;
    clock.advance(1_000);
    const revocation = await ring.revoke(revokedKid);
    expect(revocation).toMatchObject({ kid: revokedKid, previousState: 'signing', signerKid: standbyKid });
    expect(revocation.signedPeriod).toEqual({ fromMs: clock.now() - 1_000, untilMs: clock.now() });
    expect(ring.active().kid).toBe(standbyKid);
    expect(ring.isRevoked(revokedKid)).toBe(true);
    expect(ring.publicKey(revokedKid, clock.now())).toBeUndefined();
    expect(jwksKids(ring)).not.toContain(revokedKid);
    expect(ring.list().filter((key) => key.state === 'standby')).toHaveLength(1);
    expect((await store.listSigningKeys()).find((key) => key.kid === revokedKid)).toMatchObject({ state: 'revoked', privateJwk: null });
    // A restart finds it still revoked, and the standby still signing.
    const again = await load();
    expect(again.isRevoked(revokedKid)).toBe(true);
    expect(again.active().kid).toBe(standbyKid);
  });
});
