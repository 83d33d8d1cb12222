import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, SignJWT } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { SigningKeyRing } from '../../../control-plane/tokens/signing-keys.js';
import { TokenIssuer } from '../../../control-plane/tokens/token-issuer.js';
import { TOKEN_TYPES, type TokenKind } from '../../../control-plane/tokens/token-kinds.js';
import { TokenVerifier } from '../../../control-plane/tokens/token-verifier.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';

const ISSUER = 'tether-test';
const AUDIENCE = 'tether:control-plane';
const TTL_MS = 3_600_000;

describe('TokenIssuer (node:crypto signing)', () => {
  let dir: string;
  let store: SqliteStore;
  let clock: FakeClock;
  let keys: SigningKeyRing;
  let issuer: TokenIssuer;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tether-issuer-'));
    store = SqliteStore.open(join(dir, 'tether.db'));
    clock = new FakeClock();
    keys = await SigningKeyRing.load({ store, clock, logger: new LogCapture().logger, maxTokenLifetimeMs: TTL_MS + 30_000 });
    issuer = new TokenIssuer({ keys, clock, issuer: ISSUER, audience: AUDIENCE });
  });

  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const cases: { kind: TokenKind; hostId?: string; incarnation?: number; audience?: string }[] = [
    { kind: 'agent', hostId: 'host-1', incarnation: 4 },
    { kind: 'host' },
    { kind: 'audience', hostId: 'host-1', audience: 'https://api.example' },
  ];

  for (const c of cases) {
    it(`signs a ${c.kind} token byte for byte as jose's SignJWT would`, async () => {
      const issued = await issuer.issue({ subject: 'sub-1', ttlMs: TTL_MS, generation: 7, ...c });
      const { claims } = issued;
      const payload: Record<string, unknown> = { gen: 7 };
      if (c.hostId !== undefined) payload.host = c.hostId;
      if (c.incarnation !== undefined) payload.inc = c.incarnation;
      const iat = Math.floor(claims.issuedAtMs / 1000);
      // Ed25519 signatures are deterministic: the same header, claims and key give the same bytes.
      const byJose = await new SignJWT(payload)
        .setProtectedHeader({ alg: 'EdDSA', kid: claims.keyId, typ: TOKEN_TYPES[c.kind] })
        .setIssuer(ISSUER)
        .setAudience(c.audience ?? AUDIENCE)
        .setSubject('sub-1')
        .setJti(claims.tokenId)
        .setIssuedAt(iat)
        .setNotBefore(iat)
        .setExpirationTime(claims.expiresAtMs / 1000)
        .sign(keys.active().privateKey);
      expect(issued.token).toBe(byJose);
    });
  }

  it('signs tokens that jose verifies against the published JWKS and the verifier accepts', async () => {
    const issued = await issuer.issue({ kind: 'agent', subject: 'a1', ttlMs: TTL_MS, generation: 2, hostId: 'host-1', incarnation: 1 });
    expect(decodeProtectedHeader(issued.token)).toEqual({ alg: 'EdDSA', kid: issued.claims.keyId, typ: 'tether-agent+jwt' });
    const { payload } = await jwtVerify(issued.token, createLocalJWKSet(keys.jwks(clock.now())), {
      algorithms: ['EdDSA'],
      issuer: ISSUER,
      audience: AUDIENCE,
      typ: 'tether-agent+jwt',
      currentDate: new Date(clock.now()),
    });
    expect(payload).toMatchObject({ sub: 'a1', gen: 2, host: 'host-1', inc: 1, jti: issued.claims.tokenId, exp: issued.claims.expiresAtMs / 1000 });
    const verifier = new TokenVerifier({ keys, clock, issuer: ISSUER, audience: AUDIENCE, clockToleranceMs: 30_000, isRevoked: () => Promise.resolve(false) });
    expect(await verifier.verify(issued.token, 'agent')).toEqual(issued.claims);
  });

  it('signs again with the key active now when the signing key changed while the signature was computed off the event loop', async () => {
    clock.advance(120_000); // past the JWKS cache lifetime, so the standby may sign
    const before = keys.active();
    await keys.rotate();
    const after = keys.active();
    expect(after.kid).not.toBe(before.kid);
    // The key ring as the issuer sees it: `before` signs when the token is prepared, `after` once the signature is back.
    let calls = 0;
    const changing = { active: () => (++calls === 1 ? before : after) } as unknown as SigningKeyRing;
    const racing = new TokenIssuer({ keys: changing, clock, issuer: ISSUER, audience: AUDIENCE });
    const issued = await racing.issue({ kind: 'agent', subject: 'a1', ttlMs: TTL_MS, generation: 3, hostId: 'host-1', incarnation: 1 });
    expect(issued.claims.keyId).toBe(after.kid);
    expect(decodeProtectedHeader(issued.token).kid).toBe(after.kid);
    const { payload } = await jwtVerify(issued.token, createLocalJWKSet(keys.jwks(clock.now())), { algorithms: ['EdDSA'], currentDate: new Date(clock.now()) });
    expect(payload).toMatchObject({ sub: 'a1', gen: 3, jti: issued.claims.tokenId });
  });

  it('signs with the key that took over after a rotation of the signing key', async () => {
    clock.advance(120_000); // past the JWKS cache lifetime, so the standby may sign
    const rotation = await keys.rotate();
    const issued = await issuer.issue({ kind: 'host', subject: 'h1', ttlMs: TTL_MS, generation: 1 });
    expect(issued.claims.keyId).toBe(rotation.kid);
    await expect(
      jwtVerify(issued.token, createLocalJWKSet(keys.jwks(clock.now())), { algorithms: ['EdDSA'], currentDate: new Date(clock.now()) }),
    ).resolves.toBeDefined();
  });
});
