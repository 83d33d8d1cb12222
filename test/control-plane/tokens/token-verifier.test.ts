import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { TokenExpiredError, TokenRevokedError } from '../../../common/errors.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { AUDIENCE_KEY_PURPOSE, FEDERATION_ALGORITHM, JWKS_MAX_AGE_MS, SigningKeyRing } from '../../../control-plane/tokens/signing-keys.js';
import { MAX_CLAIM_LABELS, MAX_CLAIM_LENGTH, MAX_LABEL_LENGTH, TokenIssuer, type IssueRequest } from '../../../control-plane/tokens/token-issuer.js';
import { MAX_TOKEN_LENGTH, type TokenClaims, type TokenKind } from '../../../control-plane/tokens/token-kinds.js';
import { MIN_VERIFIER_CACHE_SIZE, TokenRejectedError, TokenVerifier, verifierCacheSize } from '../../../control-plane/tokens/token-verifier.js';
import { FakeClock } from '../../support/fake-clock.js';
import { partsOf, signEdDsa } from '../../support/forge-token.js';
import { LogCapture } from '../../support/log-capture.js';

const ISSUER = 'tether-test';
const AUDIENCE = 'tether:control-plane';
const TOLERANCE_MS = 30_000;
const TTL_MS = 3_600_000;

describe('TokenVerifier', () => {
  let dir: string;
  let store: SqliteStore;
  let clock: FakeClock;
  let keys: SigningKeyRing;
  let issuer: TokenIssuer;
  /** Every claims the verifier asked about: one per signature verification that got that far. */
  let revocationChecks: TokenClaims[];
  let revokedSubjects: Set<string>;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tether-verifier-'));
    store = SqliteStore.open(join(dir, 'tether.db'));
    clock = new FakeClock();
    keys = await SigningKeyRing.load({ store, clock, logger: new LogCapture().logger, maxTokenLifetimeMs: 60_000 });
    issuer = new TokenIssuer({ keys, clock, issuer: ISSUER, audience: AUDIENCE });
    revocationChecks = [];
    revokedSubjects = new Set();
  });

  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function verifier(cacheSize?: number | (() => number)): TokenVerifier {
    return new TokenVerifier({
      keys,
      clock,
      issuer: ISSUER,
      audience: AUDIENCE,
      clockToleranceMs: TOLERANCE_MS,
      ...(cacheSize === undefined ? {} : { cacheSize }),
      isRevoked: (claims) => {
        revocationChecks.push(claims);
        return Promise.resolve(revokedSubjects.has(claims.subject));
      },
    });
  }

  async function issue(kind: TokenKind, subject: string, extra: Partial<IssueRequest> = {}): Promise<string> {
    const request: IssueRequest = { kind, subject, ttlMs: TTL_MS, generation: 1, ...(kind === 'host' ? {} : { hostId: 'host-1', incarnation: 1 }), ...extra };
    return (await issuer.issue(request)).token;
  }

  /** The refusal reason, another error's name, or 'accepted'. */
  async function reasonOf(promise: Promise<unknown>): Promise<string> {
    try {
      await promise;
      return 'accepted';
    } catch (err) {
      if (err instanceof TokenRejectedError) return err.reason;
      return (err as Error).name;
    }
  }

  it('verifies an agent token and returns its claims', async () => {
    const v = verifier();
    const issued = await issuer.issue({ kind: 'agent', subject: 'a1', ttlMs: TTL_MS, generation: 3, hostId: 'host-1', incarnation: 2 });
    const claims = await v.verify(issued.token, 'agent');
    expect(claims).toEqual(issued.claims);
    expect(claims).toMatchObject({ kind: 'agent', subject: 'a1', hostId: 'host-1', generation: 3, incarnation: 2, audience: AUDIENCE });
    expect(revocationChecks).toHaveLength(1);
  });

  it('serves a second verification from the cache', async () => {
    const v = verifier();
    const token = await issue('agent', 'a1');
    const first = await v.verify(token, 'agent');
    const second = await v.verify(token, 'agent');
    expect(second).toEqual(first);
    expect(revocationChecks).toHaveLength(1);
    expect(v.cacheEntries).toBe(1);
  });

  it('neither caches nor accepts a revoked token', async () => {
    const v = verifier();
    const token = await issue('agent', 'a1');
    revokedSubjects.add('a1');
    await expect(v.verify(token, 'agent')).rejects.toBeInstanceOf(TokenRevokedError);
    expect(v.cacheEntries).toBe(0);
    await expect(v.verify(token, 'agent')).rejects.toBeInstanceOf(TokenRevokedError);
    expect(revocationChecks).toHaveLength(2);
  });

  it('drops every cached token of a subject on forgetSubject, and only those', async () => {
    const v = verifier();
    const a1First = await issue('agent', 'a1', { generation: 1 });
    const a1Second = await issue('agent', 'a1', { generation: 2 });
    const a2 = await issue('agent', 'a2');
    for (const token of [a1First, a1Second, a2]) await v.verify(token, 'agent');
    expect(v.cacheEntries).toBe(3);

    // Same subject, other kind: nothing of the agent's goes.
    v.forgetSubject('host', 'a1');
    expect(v.cacheEntries).toBe(3);

    v.forgetSubject('agent', 'a1');
    expect(v.cacheEntries).toBe(1);
    revokedSubjects.add('a1');
    await expect(v.verify(a1First, 'agent')).rejects.toBeInstanceOf(TokenRevokedError);
    await expect(v.verify(a1Second, 'agent')).rejects.toBeInstanceOf(TokenRevokedError);
    expect(revocationChecks).toHaveLength(5);
    await v.verify(a2, 'agent');
    expect(revocationChecks).toHaveLength(5);
  });

  it('consults isRevoked again for a forgotten subject that is still live', async () => {
    const v = verifier();
    const token = await issue('agent', 'a1');
    await v.verify(token, 'agent');
    v.forgetSubject('agent', 'a1');
    expect(v.cacheEntries).toBe(0);
    await v.verify(token, 'agent');
    expect(revocationChecks).toHaveLength(2);
    expect(v.cacheEntries).toBe(1);
  });

  it('does not cache a token whose subject was forgotten while its revocation check ran', async () => {
    // An agent stopped while one of its calls is being verified: the store said
    // "live" a moment before the stop, so this call passes, but the token must not
    // outlive the stop in the cache.
    let isStopping = true;
    const v: TokenVerifier = new TokenVerifier({
      keys,
      clock,
      issuer: ISSUER,
      audience: AUDIENCE,
      clockToleranceMs: TOLERANCE_MS,
      isRevoked: (claims) => {
        revocationChecks.push(claims);
        const wasRevoked = revokedSubjects.has(claims.subject);
        if (isStopping) {
          isStopping = false;
          revokedSubjects.add(claims.subject);
          v.forgetSubject('agent', claims.subject);
        }
        return Promise.resolve(wasRevoked);
      },
    });
    const token = await issue('agent', 'a1');
    await v.verify(token, 'agent');
    expect(v.cacheEntries).toBe(0);
    await expect(v.verify(token, 'agent')).rejects.toBeInstanceOf(TokenRevokedError);
    expect(revocationChecks).toHaveLength(2);
  });

  it('verifies a token presented by many calls at once only once (they join the verification under way)', async () => {
    // After a rotation every call in flight carries the fresh token: each used to pay a signature check and a store read.
    const v = verifier();
    const token = await issue('agent', 'a1');
    const all = await Promise.all(Array.from({ length: 64 }, () => v.verify(token, 'agent')));
    expect(revocationChecks).toHaveLength(1);
    expect(new Set(all.map((claims) => claims.tokenId)).size).toBe(1);
    expect(v.verificationsInFlight).toBe(0);
    expect(v.cacheEntries).toBe(1);
  });

  it('shares a refusal with every call that joined, and keeps nothing of it', async () => {
    const v = verifier();
    const token = await issue('agent', 'a1');
    revokedSubjects.add('a1');
    const reasons = await Promise.all(Array.from({ length: 8 }, () => v.verify(token, 'agent').then(() => 'accepted', (err: Error) => err.name)));
    expect(new Set(reasons)).toEqual(new Set(['TokenRevokedError']));
    expect(revocationChecks).toHaveLength(1);
    expect(v.verificationsInFlight).toBe(0);
    revokedSubjects.delete('a1');
    await v.verify(token, 'agent');
    expect(revocationChecks).toHaveLength(2);
  });

  it('does not join a verification under way for another kind or audience, nor one older than a forgetSubject', async () => {
    const v = verifier();
    const token = await issue('agent', 'a1');
    const asHost = reasonOf(v.verify(token, 'host'));
    const otherAudience = reasonOf(v.verify(token, 'agent', 'another-service'));
    const first = reasonOf(v.verify(token, 'agent'));
    // The agent stopped while the first verification runs: a call presenting its token after that is checked afresh.
    v.forgetSubject('agent', 'a1');
    revokedSubjects.add('a1');
    const afterStop = reasonOf(v.verify(token, 'agent'));
    const [, hostReason, audienceReason, afterStopReason] = await Promise.all([first, asHost, otherAudience, afterStop]);
    expect(hostReason).toBe('claims');
    expect(audienceReason).toBe('claims');
    expect(afterStopReason).toBe('TokenRevokedError');
    // The first verification and the one after the stop reached the revocation check; the other kind and audience did not.
    expect(revocationChecks.map((claims) => claims.subject)).toEqual(['a1', 'a1']);
  });

  it('keeps at most cacheSize tokens, dropping the oldest', async () => {
    const v = verifier(3);
    const tokens: string[] = [];
    for (let i = 0; i < 5; i++) tokens.push(await issue('agent', `a${i}`));
    for (const token of tokens) await v.verify(token, 'agent');
    expect(v.cacheEntries).toBe(3);
    expect(revocationChecks).toHaveLength(5);

    // The newest three are cached: no new check.
    for (const token of tokens.slice(2)) await v.verify(token, 'agent');
    expect(revocationChecks).toHaveLength(5);
    // The oldest was dropped: checked again (and cached again, within the bound).
    await v.verify(tokens[0] as string, 'agent');
    expect(revocationChecks).toHaveLength(6);
    expect(v.cacheEntries).toBe(3);

    // Forgetting an evicted subject finds nothing stale to drop.
    v.forgetSubject('agent', 'a1');
    expect(v.cacheEntries).toBe(3);
  });

  it('follows a cache bound given as a function, read at each insertion (it grows and shrinks with live tokens)', async () => {
    let bound = 2;
    const v = verifier(() => bound);
    const tokens: string[] = [];
    for (let i = 0; i < 6; i++) tokens.push(await issue('agent', `b${i}`));
    for (const token of tokens.slice(0, 3)) await v.verify(token, 'agent');
    expect(v.cacheEntries).toBe(2);
    bound = 5;
    for (const token of tokens.slice(3)) await v.verify(token, 'agent');
    expect(v.cacheEntries).toBe(5);
    bound = 2;
    await v.verify(tokens[0] as string, 'agent');
    expect(v.cacheEntries).toBe(2);
  });

  it.each([
    { liveAgents: 0, hosts: 0, size: MIN_VERIFIER_CACHE_SIZE },
    { liveAgents: 1_000, hosts: 10, size: MIN_VERIFIER_CACHE_SIZE },
    { liveAgents: 100_000, hosts: 1_000, size: 252_500 },
    { liveAgents: 1_000_000, hosts: 0, size: 2_500_000 },
  ])('sizes the cache to $size for $liveAgents live agents on $hosts hosts', ({ liveAgents, hosts, size }) => {
    expect(verifierCacheSize(liveAgents, hosts)).toBe(size);
  });

  it('refuses an expired cached token and drops it', async () => {
    const v = verifier();
    const token = await issue('agent', 'a1');
    const claims = await v.verify(token, 'agent');
    clock.advance(claims.expiresAtMs + TOLERANCE_MS - clock.now() - 1);
    await v.verify(token, 'agent');
    expect(revocationChecks).toHaveLength(1);

    clock.advance(1);
    await expect(v.verify(token, 'agent')).rejects.toBeInstanceOf(TokenExpiredError);
    expect(v.cacheEntries).toBe(0);
    await expect(v.verify(token, 'agent')).rejects.toBeInstanceOf(TokenExpiredError);
    expect(revocationChecks).toHaveLength(1);
  });

  it.each([
    { what: 'just inside the tolerance', afterExpiryMs: TOLERANCE_MS - 1, verdict: 'accepted' },
    { what: 'at the tolerance', afterExpiryMs: TOLERANCE_MS, verdict: 'TokenExpiredError' },
  ])('gives the same verdict cached or not, $what', async ({ afterExpiryMs, verdict }) => {
    const cached = verifier();
    const token = await issue('agent', 'a1');
    const claims = await cached.verify(token, 'agent');
    clock.advance(claims.expiresAtMs + afterExpiryMs - clock.now());
    expect(await reasonOf(cached.verify(token, 'agent'))).toBe(verdict);
    expect(await reasonOf(verifier().verify(token, 'agent'))).toBe(verdict);
  });

  it.each([
    { issued: 'agent', as: 'host' },
    { issued: 'agent', as: 'audience' },
    { issued: 'host', as: 'agent' },
    { issued: 'host', as: 'audience' },
    { issued: 'audience', as: 'agent' },
    { issued: 'audience', as: 'host' },
  ] as const)('refuses a $issued token as a $as token, cached or not', async ({ issued, as }) => {
    const v = verifier();
    const token = await issue(issued, 'x1');
    expect(await reasonOf(v.verify(token, as))).toBe('claims');
    // Verified (and so cached) as what it is, it still does not pass for another kind.
    await v.verify(token, issued);
    expect(v.cacheEntries).toBe(1);
    expect(await reasonOf(v.verify(token, as))).toBe('claims');
  });

  it('pins the audience, cached or not', async () => {
    const v = verifier();
    const token = await issue('audience', 'a1', { audience: 'https://svc-a.example' });
    expect(await reasonOf(v.verify(token, 'audience', 'https://svc-b.example'))).toBe('claims');
    expect((await v.verify(token, 'audience', 'https://svc-a.example')).audience).toBe('https://svc-a.example');
    expect(await reasonOf(v.verify(token, 'audience', 'https://svc-b.example'))).toBe('claims');
    expect(await reasonOf(v.verify(token, 'audience'))).toBe('claims');
  });

  it.each([
    { what: 'a token over the size cap', mangle: (token: string): string => `${token}${'A'.repeat(9_000)}`, reason: 'oversize' },
    { what: 'a token that is not a JWT', mangle: (): string => 'not-a-jwt', reason: 'malformed' },
    {
      what: 'a token with a forged signature',
      mangle: (token: string): string => {
        const [header, payload, signature] = token.split('.') as [string, string, string];
        const flipped = signature.startsWith('A') ? `B${signature.slice(1)}` : `A${signature.slice(1)}`;
        return `${header}.${payload}.${flipped}`;
      },
      reason: 'bad-signature',
    },
  ])('refuses $what as $reason', async ({ mangle, reason }) => {
    const v = verifier();
    const token = await issue('agent', 'a1');
    expect(await reasonOf(v.verify(mangle(token), 'agent'))).toBe(reason);
    expect(v.cacheEntries).toBe(0);
    expect(revocationChecks).toHaveLength(0);
  });

  it('refuses a token signed by a key that no longer verifies', async () => {
    const v = verifier();
    const token = await issue('agent', 'a1');
    clock.advance(JWKS_MAX_AGE_MS + 1);
    await keys.rotate();
    clock.advance(60_000);
    expect(await reasonOf(v.verify(token, 'agent'))).toBe('unknown-key');
  });

  it('refuses at once, as key-revoked, a token signed by a revoked key, even one it had cached; tokens of the next signer pass', async () => {
    const v = verifier();
    const token = await issue('agent', 'a1');
    const other = await issue('agent', 'a2');
    expect((await v.verify(token, 'agent')).subject).toBe('a1');
    expect((await v.verify(other, 'agent')).subject).toBe('a2');
    expect(v.cacheEntries).toBe(2);
    const revokedKid = keys.active().kid;
    await keys.revoke(revokedKid);
    v.forgetKey(revokedKid);
    expect(v.cacheEntries).toBe(0);
    expect(await reasonOf(v.verify(token, 'agent'))).toBe('key-revoked');
    expect(await reasonOf(v.verify(other, 'agent'))).toBe('key-revoked');
    const fresh = await issue('agent', 'a1');
    expect((await v.verify(fresh, 'agent')).keyId).not.toBe(revokedKid);
  });

  /**
   * Claims signed with the real key, each wrong in one way only: every claim's
   * type and range is checked, and `typ` and `aud` must be exactly what the
   * issuer writes (see "What the verifier accepts" in docs/architecture.md).
   */
  describe('claims of a token signed with the real key', () => {
    const cases: { what: string; kind?: TokenKind; header?: Record<string, unknown>; payload: Record<string, unknown>; reason: string }[] = [
      { what: 'nothing wrong (control)', payload: {}, reason: 'accepted' },
      { what: 'nothing wrong, a host token without host (control)', kind: 'host', payload: { host: undefined, inc: undefined }, reason: 'accepted' },
      { what: 'gen 0 (control)', payload: { gen: 0 }, reason: 'accepted' },
      { what: 'a negative gen', payload: { gen: -1 }, reason: 'claims' },
      { what: 'a fractional gen', payload: { gen: 1.5 }, reason: 'claims' },
      { what: 'gen past 2^53', payload: { gen: 2 ** 53 }, reason: 'claims' },
      { what: 'gen as a string', payload: { gen: '1' }, reason: 'claims' },
      { what: 'gen null', payload: { gen: null }, reason: 'claims' },
      { what: 'a negative inc', payload: { inc: -1 }, reason: 'claims' },
      { what: 'inc as a string', payload: { inc: '1' }, reason: 'claims' },
      { what: 'sub as a number', payload: { sub: 7 }, reason: 'claims' },
      { what: 'an empty sub', payload: { sub: '' }, reason: 'claims' },
      { what: 'jti as a number', payload: { jti: 7 }, reason: 'claims' },
      { what: 'an empty jti', payload: { jti: '' }, reason: 'claims' },
      { what: 'host as a number', payload: { host: 7 }, reason: 'claims' },
      { what: 'an empty host on an agent token', payload: { host: '' }, reason: 'claims' },
      { what: 'host as a number on a host token', kind: 'host', payload: { host: 7, inc: undefined }, reason: 'claims' },
      { what: 'a negative iat', payload: { iat: -1 }, reason: 'claims' },
      { what: 'a fractional iat', payload: { iat: 1_800_000_000.5 }, reason: 'claims' },
      { what: 'iat after exp', payload: { iat: 1_800_000_000 + 7_200 }, reason: 'claims' },
      { what: 'a fractional exp', payload: { exp: 1_800_000_000 + 3_600.5 }, reason: 'claims' },
      { what: 'exp past what milliseconds can hold', payload: { exp: 2 ** 53 }, reason: 'claims' },
      { what: 'aud an array holding ours', payload: { aud: [AUDIENCE] }, reason: 'claims' },
      { what: 'aud an array holding ours and another', payload: { aud: [AUDIENCE, 'https://other.example'] }, reason: 'claims' },
      { what: 'typ upper-cased', header: { typ: 'TETHER-AGENT+JWT' }, payload: {}, reason: 'claims' },
      { what: 'typ with application/', header: { typ: 'application/tether-agent+jwt' }, payload: {}, reason: 'claims' },
    ];
    it.each(cases)('$what: $reason', async ({ kind = 'agent', header = {}, payload, reason }) => {
      const v = verifier();
      const good = partsOf(await issue(kind, 'a1'));
      const claims: Record<string, unknown> = { ...good.payload, ...payload };
      for (const [name, value] of Object.entries(payload)) if (value === undefined) delete claims[name];
      const token = await signEdDsa({ ...good.header, ...header }, claims, keys.active().privateKey);
      expect(await reasonOf(v.verify(token, kind))).toBe(reason);
      if (reason !== 'accepted') expect(v.cacheEntries).toBe(0);
    });
  });
});

describe('TokenVerifier under federation: algorithms pinned per kind', () => {
  let dir: string;
  let store: SqliteStore;

  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('verifies audience tokens as ES256 from the federation keys under the issuer URL only, and agent tokens as EdDSA from the own keys only', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tether-verifier-fed-'));
    store = SqliteStore.open(join(dir, 'tether.db'));
    const clock = new FakeClock();
    const logger = new LogCapture().logger;
    const keys = await SigningKeyRing.load({ store, clock, logger, maxTokenLifetimeMs: 60_000 });
    const federationKeys = await SigningKeyRing.load({ store, clock, logger, maxTokenLifetimeMs: 60_000, purpose: AUDIENCE_KEY_PURPOSE, algorithm: FEDERATION_ALGORITHM, maxPublishedKeys: 100 });
    const federation = { keys: federationKeys, issuer: 'https://tether.example' };
    const fedIssuer = new TokenIssuer({ keys, clock, issuer: ISSUER, audience: AUDIENCE, federation });
    // The same control plane without an issuer URL: EdDSA audience tokens under the own issuer.
    const plainIssuer = new TokenIssuer({ keys, clock, issuer: ISSUER, audience: AUDIENCE });
    const v = new TokenVerifier({ keys, clock, issuer: ISSUER, audience: AUDIENCE, clockToleranceMs: TOLERANCE_MS, federation, isRevoked: () => Promise.resolve(false) });
    const reason = async (promise: Promise<unknown>): Promise<string> =>
      promise.then(
        () => 'accepted',
        (err: unknown) => (err instanceof TokenRejectedError ? err.reason : (err as Error).name),
      );
    const request: IssueRequest = { kind: 'audience', subject: 'a1', hostId: 'h1', ttlMs: TTL_MS, generation: 1, audience: 'sts.amazonaws.com', agent: { name: 'n', labels: { team: 'a' } } };

    const es256 = await fedIssuer.issue(request);
    expect(es256.token.split('.')[0]).toBe(Buffer.from(JSON.stringify({ alg: 'ES256', kid: federationKeys.active().kid, typ: 'tether-aud+jwt' })).toString('base64url'));
    // A JOSE ES256 signature is r||s, 64 bytes (never DER).
    expect(Buffer.from(es256.token.split('.')[2] ?? '', 'base64url')).toHaveLength(64);
    expect(await v.verify(es256.token, 'audience', 'sts.amazonaws.com')).toMatchObject({ subject: 'a1', keyId: federationKeys.active().kid });
    // An EdDSA audience token, signed by an own key, is refused as an audience token under federation.
    const eddsa = await plainIssuer.issue(request);
    expect(await reason(v.verify(eddsa.token, 'audience', 'sts.amazonaws.com'))).toBe('malformed');
    // Agent tokens stay EdDSA, and an ES256 token never passes for one.
    const agent = await fedIssuer.issue({ kind: 'agent', subject: 'a1', hostId: 'h1', incarnation: 1, ttlMs: TTL_MS, generation: 1 });
    expect(await reason(v.verify(agent.token, 'agent'))).toBe('accepted');
    expect(await reason(v.verify(es256.token, 'agent', 'sts.amazonaws.com'))).toBe('malformed');
    // The claims for policies, bounded: at most 16 labels, strings cut to 128 characters.
    const labels = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${String(i).padStart(2, '0')}${'x'.repeat(200)}`, 'v'.repeat(500)]));
    const big = await fedIssuer.issue({ ...request, audience: 'a'.repeat(256), agent: { name: 'n'.repeat(1000), labels } });
    const payload = JSON.parse(Buffer.from(big.token.split('.')[1] ?? '', 'base64url').toString()) as { name: string; labels: Record<string, string> };
    expect(payload.name).toHaveLength(MAX_CLAIM_LENGTH);
    expect(Object.keys(payload.labels)).toHaveLength(MAX_CLAIM_LABELS);
    for (const [key, value] of Object.entries(payload.labels)) expect([key.length, value.length]).toEqual([MAX_LABEL_LENGTH, MAX_LABEL_LENGTH]);
    expect(big.token.length).toBeLessThan(3 * 1024);
    expect(big.token.length).toBeLessThan(MAX_TOKEN_LENGTH / 2);
    expect(await reason(v.verify(big.token, 'audience', 'a'.repeat(256)))).toBe('accepted');
  });
});
