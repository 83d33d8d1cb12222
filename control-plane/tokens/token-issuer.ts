import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import type { Clock } from '../../common/clock.js';
import { UnavailableError } from '../../common/errors.js';
import { SIGNING_ALGORITHM, type SigningKeyRing } from './signing-keys.js';
import { TOKEN_TYPES, type IssuedToken, type TokenKind } from './token-kinds.js';

/** Signing attempts when the key is revoked under one. */
const MAX_SIGN_ATTEMPTS = 3;

/** Options of {@link TokenIssuer}. */
export interface TokenIssuerOptions {
  keys: SigningKeyRing;
  clock: Clock;
  /** The `iss` of every token. */
  issuer: string;
  /** The `aud` of agent and host tokens: the control plane itself. */
  audience: string;
}

/** What to put in a token. */
export interface IssueRequest {
  kind: TokenKind;
  subject: string;
  ttlMs: number;
  generation: number;
  hostId?: string;
  incarnation?: number;
  /** For audience tokens; defaults to the control plane's audience. */
  audience?: string;
  /** Caps `exp` (an audience token never outlives the agent token it was minted with). */
  notAfterMs?: number;
}

/** Signs Tether's JWTs with the active Ed25519 key. */
export class TokenIssuer {
  readonly #options: TokenIssuerOptions;

  constructor(options: TokenIssuerOptions) {
    this.#options = options;
  }

  /** The control plane's own audience. */
  get audience(): string {
    return this.#options.audience;
  }

  /** Signs a token of `request.kind`. */
  async issue(request: IssueRequest): Promise<IssuedToken> {
    // A key revoked while a token was being signed with it would leave that token refused in the
    // holder's hands with no rotation scheduled for it (the revocation's sweep may have read the
    // credential before this one was stored): sign again with the signer that took over.
    for (let attempt = 1; ; attempt++) {
      const issued = await this.#sign(request);
      if (!this.#options.keys.isRevoked(issued.claims.keyId)) return issued;
      if (attempt >= MAX_SIGN_ATTEMPTS) throw new UnavailableError('the signing key keeps being revoked; try again');
    }
  }

  async #sign(request: IssueRequest): Promise<IssuedToken> {
    const { keys, clock, issuer } = this.#options;
    const key = keys.active();
    // `iat` and `exp` are whole seconds (RFC 7519 NumericDate as everyone parses it), but due times and
    // remaining-life checks use the issue time in milliseconds kept beside the token: a floored `iat` made
    // a token look up to a second older than it is, so its rotation fell due early and, at short TTLs,
    // agents rotated far more often than every half TTL. `exp` is rounded up, so a fresh token has at
    // least its TTL to live (a `notAfterMs` cap is rounded down: never past what it caps).
    const issuedAtMs = clock.now();
    const issuedAtS = Math.floor(issuedAtMs / 1000);
    let expiresAtS = Math.max(issuedAtS + 1, Math.ceil((issuedAtMs + request.ttlMs) / 1000));
    if (request.notAfterMs !== undefined) expiresAtS = Math.min(expiresAtS, Math.floor(request.notAfterMs / 1000));
    const tokenId = randomUUID();
    const audience = request.audience ?? this.#options.audience;
    const payload: Record<string, unknown> = { gen: request.generation };
    if (request.hostId !== undefined) payload.host = request.hostId;
    if (request.incarnation !== undefined) payload.inc = request.incarnation;
    const token = await new SignJWT(payload)
      .setProtectedHeader({ alg: SIGNING_ALGORITHM, kid: key.kid, typ: TOKEN_TYPES[request.kind] })
      .setIssuer(issuer)
      .setAudience(audience)
      .setSubject(request.subject)
      .setJti(tokenId)
      .setIssuedAt(issuedAtS)
      .setNotBefore(issuedAtS)
      .setExpirationTime(expiresAtS)
      .sign(key.privateKey);
    return {
      token,
      claims: {
        kind: request.kind,
        subject: request.subject,
        hostId: request.hostId ?? '',
        audience,
        generation: request.generation,
        incarnation: request.incarnation ?? 0,
        tokenId,
        keyId: key.kid,
        issuedAtMs,
        expiresAtMs: expiresAtS * 1000,
      },
    };
  }
}
