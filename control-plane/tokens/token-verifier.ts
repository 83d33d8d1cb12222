import { errors, jwtVerify, type JWTHeaderParameters, type JWTPayload } from 'jose';
import type { Clock } from '../../common/clock.js';
import { TokenExpiredError, TokenRevokedError, UnauthenticatedError } from '../../common/errors.js';
import type { SigningKeyRing } from './signing-keys.js';
import { MAX_TOKEN_LENGTH, TOKEN_TYPES, type TokenClaims, type TokenKind } from './token-kinds.js';

/** Why a token was refused; a metric label, never the token. */
export type RejectReason = 'malformed' | 'oversize' | 'unknown-key' | 'key-revoked' | 'bad-signature' | 'expired' | 'claims' | 'revoked';

/** Thrown for a refused token; `reason` is safe to log and to count. */
export class TokenRejectedError extends UnauthenticatedError {
  readonly reason: RejectReason;

  constructor(reason: RejectReason, options?: ErrorOptions) {
    super(`token refused: ${reason}`, options);
    this.reason = reason;
  }
}

/** The largest `iat`/`exp` (seconds) whose value in milliseconds is still a safe integer. */
const MAX_NUMERIC_DATE_S = Math.floor(Number.MAX_SAFE_INTEGER / 1000);

/** Whether `value` is a whole number from `min` to `max` (a safe integer). */
function isWholeWithin(value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= min && value <= max;
}

/** Whether `value` is a string of 1 to 512 characters (ids are far shorter; the token itself is capped). */
function isId(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= 512;
}

/**
 * The claims of a signed token of `kind`, each checked for type and range, as
 * {@link TokenClaims} without what the caller knows (kind, audience, key):
 * `sub` and `jti` non-empty strings; `host` a non-empty string (required but on
 * host tokens); `gen` and `inc` (optional, 0 when absent) whole numbers from 0;
 * `iat` and `exp` whole seconds from 0 with `iat <= exp`. A claim of another
 * type or out of range is refused as `claims`: once signed by a key of ours, a
 * negative `gen` used to pass and fail later, as INTERNAL, when a reply could
 * not encode it.
 */
function checkedClaims(payload: JWTPayload, kind: TokenKind): Omit<TokenClaims, 'kind' | 'audience' | 'keyId'> {
  const { sub, jti, host, gen, inc, iat, exp } = payload;
  if (!isId(sub) || !isId(jti)) throw new TokenRejectedError('claims');
  let hostId = '';
  if (isId(host)) hostId = host;
  else if (host !== undefined || kind !== 'host') throw new TokenRejectedError('claims');
  if (!isWholeWithin(gen, 0) || (inc !== undefined && !isWholeWithin(inc, 0))) throw new TokenRejectedError('claims');
  if (!isWholeWithin(iat, 0, MAX_NUMERIC_DATE_S) || !isWholeWithin(exp, iat, MAX_NUMERIC_DATE_S)) throw new TokenRejectedError('claims');
  return {
    subject: sub,
    hostId,
    generation: gen,
    incarnation: inc ?? 0,
    tokenId: jti,
    issuedAtMs: iat * 1000,
    expiresAtMs: exp * 1000,
  };
}

/** Options of {@link TokenVerifier}. */
export interface TokenVerifierOptions {
  keys: SigningKeyRing;
  clock: Clock;
  issuer: string;
  /** The control plane's own audience, required on agent and host tokens. */
  audience: string;
  /** Allowed skew on `nbf` and `exp`. */
  clockToleranceMs: number;
  /** Federation: audience tokens are verified against these keys (ES256 only) and this `iss` instead. */
  federation?: { keys: SigningKeyRing; issuer: string };
  /**
   * Verified tokens kept; the oldest are dropped beyond this. A function is
   * read at each insertion, so the bound follows the number of live tokens
   * (see {@link verifierCacheSize}). Default 100,000.
   */
  cacheSize?: number | (() => number);
  /**
   * Consulted after the signature and claims check out, before a token is
   * cached: true refuses it as revoked.
   */
  isRevoked: (claims: TokenClaims) => Promise<boolean>;
}

/** The least {@link verifierCacheSize} sizes the cache to. */
export const MIN_VERIFIER_CACHE_SIZE = 10_000;

/**
 * A verifier cache bound sized from the live tokens: each live agent holds up
 * to two that verify (the current one and the one it replaced, valid until its
 * own `exp`), each host up to two as well; a quarter more for margin, and at
 * least {@link MIN_VERIFIER_CACHE_SIZE}. Smaller, a tool call of one agent in
 * every few would pay a signature check and a store read (the cache evicts
 * oldest first); much larger, a token flood would only cost memory.
 */
export function verifierCacheSize(liveAgents: number, hosts: number): number {
  return Math.max(MIN_VERIFIER_CACHE_SIZE, Math.ceil(1.25 * (2 * Math.max(0, liveAgents) + 2 * Math.max(0, hosts))));
}

interface CacheEntry {
  claims: TokenClaims;
  cacheKey: string;
}

/** A verification under way, which later presentations of the same token join. */
interface Verifying {
  kind: TokenKind;
  audience: string;
  /** {@link TokenVerifier.forgetSubject} and `forgetKey` calls when it began: a forget since makes it stale. */
  forgets: number;
  claims: Promise<TokenClaims>;
}

/**
 * Verifies Tether tokens: one algorithm per kind (EdDSA; ES256 for audience
 * tokens under federation), `kid` required and known to that kind's keys, `typ` exactly
 * that of the expected kind, `iss` pinned, `aud` exactly the expected audience
 * (a string, never an array), `exp` required, every claim checked for type and
 * range. Verified tokens are
 * cached until they expire so the hot path skips the signature check; entries
 * are dropped when their subject's tokens are revoked. Presentations of a token
 * whose verification is under way join it (a fresh token meets many calls at
 * once: after a rotation, every call in flight carries it), unless a subject or
 * key was forgotten since it began.
 */
export class TokenVerifier {
  readonly #options: TokenVerifierOptions;
  readonly #cache = new Map<string, CacheEntry>();
  /** Token → its verification under way. */
  readonly #verifying = new Map<string, Verifying>();
  /** `kind:subject` → tokens of it in the cache, so revocation can drop them. */
  readonly #bySubject = new Map<string, Set<string>>();
  readonly #cacheSize: () => number;
  /**
   * Bumped by every {@link forgetSubject}. A verification caches its token only if
   * no subject was forgotten while it awaited `isRevoked`: otherwise a stop landing
   * between the store read and the cache write would leave a revoked token cached.
   */
  #forgets = 0;

  constructor(options: TokenVerifierOptions) {
    this.#options = options;
    const cacheSize = options.cacheSize ?? 100_000;
    this.#cacheSize = typeof cacheSize === 'number' ? (): number => cacheSize : cacheSize;
  }

  /** How many verified tokens are cached. */
  get cacheEntries(): number {
    return this.#cache.size;
  }

  /** Verifies `token` as a token of `kind`; throws {@link TokenRejectedError} or {@link TokenExpiredError}. */
  async verify(token: string, kind: TokenKind, audience?: string): Promise<TokenClaims> {
    const nowMs = this.#options.clock.now();
    const expectedAudience = audience ?? this.#options.audience;
    const cached = this.#cache.get(token);
    // A hit must match what is asked for now, audience included: a token cached for one audience never passes for another.
    if (cached !== undefined && cached.claims.kind === kind && cached.claims.audience === expectedAudience) {
      if (nowMs < cached.claims.expiresAtMs + this.#options.clockToleranceMs) return cached.claims;
      this.#drop(token);
      throw new TokenExpiredError();
    }
    const pending = this.#verifying.get(token);
    if (pending !== undefined && pending.kind === kind && pending.audience === expectedAudience && pending.forgets === this.#forgets) {
      const claims = await pending.claims;
      if (this.#options.clock.now() >= claims.expiresAtMs + this.#options.clockToleranceMs) throw new TokenExpiredError();
      return claims;
    }
    const entry: Verifying = { kind, audience: expectedAudience, forgets: this.#forgets, claims: this.#verifyOnce(token, kind, nowMs, expectedAudience) };
    this.#verifying.set(token, entry);
    const settled = (): void => {
      if (this.#verifying.get(token) === entry) this.#verifying.delete(token);
    };
    entry.claims.then(settled, settled);
    return entry.claims;
  }

  /** How many verifications are under way (each shared by every presentation of its token meanwhile). */
  get verificationsInFlight(): number {
    return this.#verifying.size;
  }

  async #verifyOnce(token: string, kind: TokenKind, nowMs: number, audience: string): Promise<TokenClaims> {
    const claims = await this.#verifySignature(token, kind, nowMs, audience);
    const forgetsBefore = this.#forgets;
    if (await this.#options.isRevoked(claims)) throw new TokenRevokedError();
    if (this.#forgets === forgetsBefore) this.#remember(token, claims);
    return claims;
  }

  /** Drops every cached token of `subject` (its tokens were revoked). */
  forgetSubject(kind: TokenKind, subject: string): void {
    this.#forgets++;
    const key = `${kind}:${subject}`;
    const tokens = this.#bySubject.get(key);
    if (tokens === undefined) return;
    this.#bySubject.delete(key);
    for (const token of tokens) this.#cache.delete(token);
  }

  /**
   * Drops every cached token signed by `kid` (the key was revoked): the next
   * presentation of one is checked again, and refused.
   */
  forgetKey(kid: string): void {
    this.#forgets++;
    for (const [token, entry] of this.#cache) {
      if (entry.claims.keyId === kid) this.#drop(token);
    }
  }

  async #verifySignature(token: string, kind: TokenKind, nowMs: number, audience: string): Promise<TokenClaims> {
    if (token.length > MAX_TOKEN_LENGTH) throw new TokenRejectedError('oversize');
    const { clockToleranceMs, federation } = this.#options;
    // Algorithms pinned per kind: each kind's key ring has exactly one, and its keys verify that kind only.
    const isFederated = kind === 'audience' && federation !== undefined;
    const keys = isFederated ? federation.keys : this.#options.keys;
    const issuer = isFederated ? federation.issuer : this.#options.issuer;
    const algorithm = keys.algorithm;
    let keyId = '';
    try {
      const { payload, protectedHeader } = await jwtVerify(
        token,
        (header: JWTHeaderParameters) => {
          if (header.alg !== algorithm || typeof header.kid !== 'string') throw new TokenRejectedError('malformed');
          // Before anything else about the token: whatever a revoked key signed is refused, for that reason.
          if (keys.isRevoked(header.kid)) throw new TokenRejectedError('key-revoked');
          const key = keys.publicKey(header.kid, nowMs);
          if (key === undefined) throw new TokenRejectedError('unknown-key');
          keyId = header.kid;
          return key;
        },
        {
          algorithms: [algorithm],
          issuer,
          audience,
          typ: TOKEN_TYPES[kind],
          requiredClaims: ['exp', 'iat', 'sub', 'jti'],
          currentDate: new Date(nowMs),
          clockTolerance: Math.floor(clockToleranceMs / 1000),
        },
      );
      // jose compares `typ` as a media type (case-insensitive, `application/` optional) and takes an
      // `aud` array holding ours; our issuer writes exactly one spelling and one audience, so nothing
      // else is ours (see "What the verifier accepts" in docs/architecture.md).
      if (protectedHeader.typ !== TOKEN_TYPES[kind] || payload.aud !== audience) throw new TokenRejectedError('claims');
      return { kind, audience, keyId, ...checkedClaims(payload, kind) };
    } catch (err) {
      if (err instanceof TokenRejectedError) throw err;
      if (err instanceof errors.JWTExpired) throw new TokenExpiredError();
      if (err instanceof errors.JWSSignatureVerificationFailed) throw new TokenRejectedError('bad-signature');
      if (err instanceof errors.JWTClaimValidationFailed) throw new TokenRejectedError('claims');
      throw new TokenRejectedError('malformed');
    }
  }

  #remember(token: string, claims: TokenClaims): void {
    // Oldest first, down to one below the bound (which may have shrunk since the last insertion).
    const cacheSize = Math.max(1, this.#cacheSize());
    while (this.#cache.size >= cacheSize) {
      const oldest = this.#cache.keys().next();
      if (oldest.done === true) break;
      this.#drop(oldest.value);
    }
    const cacheKey = `${claims.kind}:${claims.subject}`;
    this.#cache.set(token, { claims, cacheKey });
    let tokens = this.#bySubject.get(cacheKey);
    if (tokens === undefined) {
      tokens = new Set();
      this.#bySubject.set(cacheKey, tokens);
    }
    tokens.add(token);
  }

  #drop(token: string): void {
    const entry = this.#cache.get(token);
    if (entry === undefined) return;
    this.#cache.delete(token);
    const tokens = this.#bySubject.get(entry.cacheKey);
    tokens?.delete(token);
    if (tokens?.size === 0) this.#bySubject.delete(entry.cacheKey);
  }
}
