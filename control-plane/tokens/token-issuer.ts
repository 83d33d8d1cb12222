import { randomUUID, sign, type KeyObject } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { SIGNING_ALGORITHM, type SigningAlgorithm, type SigningKeyRing } from './signing-keys.js';
import { TOKEN_TYPES, type IssuedToken, type TokenKind } from './token-kinds.js';

/** Options of {@link TokenIssuer}. */
export interface TokenIssuerOptions {
  keys: SigningKeyRing;
  clock: Clock;
  /** The `iss` of every token. */
  issuer: string;
  /** The `aud` of agent and host tokens: the control plane itself. */
  audience: string;
  /**
   * Federation (an issuer URL is set): audience tokens are signed by these
   * keys (ES256) under this `iss`, and carry the claims of {@link AudienceClaims}.
   */
  federation?: { keys: SigningKeyRing; issuer: string };
}

/** What an audience token says about its agent, for the policies of the services it is for (nothing secret). */
export interface AudienceClaims {
  /** The agent's name (`name` claim), cut to {@link MAX_CLAIM_LENGTH}. */
  name: string;
  /** Labels (`labels` claim, an object): the first {@link MAX_CLAIM_LABELS} by key, keys and values cut to {@link MAX_LABEL_LENGTH}. */
  labels: Readonly<Record<string, string>>;
}

/**
 * The longest agent name an audience token carries. With the label bounds
 * below and a 256-character audience, a token stays under 3 KiB: far below
 * gRPC's 8 KiB metadata limit and Tether's own cap (`MAX_TOKEN_LENGTH`).
 */
export const MAX_CLAIM_LENGTH = 128;
/** The longest label key or value an audience token carries (as Kubernetes label values). */
export const MAX_LABEL_LENGTH = 63;
/** The most labels an audience token carries. */
export const MAX_CLAIM_LABELS = 8;

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
  /** Audience tokens under federation: the agent's name and labels. */
  agent?: AudienceClaims;
}

/** Signs Tether's JWTs with the active Ed25519 key, and audience tokens under federation with the active ES256 key. */
export class TokenIssuer {
  readonly #options: TokenIssuerOptions;

  constructor(options: TokenIssuerOptions) {
    this.#options = options;
  }

  /** Whether audience tokens are federation tokens (an issuer URL is set). */
  get isFederated(): boolean {
    return this.#options.federation !== undefined;
  }

  /** The control plane's own audience. */
  get audience(): string {
    return this.#options.audience;
  }

  /**
   * Signs a token of `request.kind`. Asynchronous for callers' sake only:
   * signing is synchronous, so no key revocation can land between choosing the
   * signer and signing (with an awaited signature it could, leaving a token of
   * a revoked key in a holder with no rotation scheduled for it).
   */
  issue(request: IssueRequest): Promise<IssuedToken> {
    try {
      return Promise.resolve(this.#sign(request));
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #sign(request: IssueRequest): IssuedToken {
    const { clock, federation } = this.#options;
    const isFederated = request.kind === 'audience' && federation !== undefined;
    const keys = isFederated ? federation.keys : this.#options.keys;
    const issuer = isFederated ? federation.issuer : this.#options.issuer;
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
    if (isFederated && request.agent !== undefined) {
      payload.name = request.agent.name.slice(0, MAX_CLAIM_LENGTH);
      payload.labels = Object.fromEntries(
        Object.entries(request.agent.labels)
          .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
          .slice(0, MAX_CLAIM_LABELS)
          .map(([name, value]) => [name.slice(0, MAX_LABEL_LENGTH), value.slice(0, MAX_LABEL_LENGTH)]),
      );
    }
    // Claims in the order jose's SignJWT setters put them, so a token is byte for byte what jose would sign.
    Object.assign(payload, { iss: issuer, aud: audience, sub: request.subject, jti: tokenId, iat: issuedAtS, nbf: issuedAtS, exp: expiresAtS });
    const token = signCompactJws({ alg: key.algorithm, kid: key.kid, typ: TOKEN_TYPES[request.kind] }, payload, key.algorithm, key.signingKey);
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

/**
 * A compact JWS (RFC 7515) of `payload` under the protected `header`, signed
 * with `node:crypto`: EdDSA (Ed25519), or ES256 (P-256 and SHA-256, the
 * signature as JOSE's fixed-width r‖s, `ieee-p1363`, never DER). jose's SignJWT signs through WebCrypto,
 * whose promise and key checks made signing over a quarter of a rotation's cost
 * (issue 16's profile); `crypto.sign(null, data, key)` is the same Ed25519
 * signature, synchronous (about 50 µs). Ed25519 is deterministic, so the token
 * is byte for byte what jose produces for the same header and claims (tested);
 * verification and the JWKS stay with jose.
 */
function signCompactJws(header: Record<string, unknown>, payload: Record<string, unknown>, algorithm: SigningAlgorithm, key: KeyObject): string {
  const signingInput = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  const signature =
    algorithm === SIGNING_ALGORITHM ? sign(null, Buffer.from(signingInput), key) : sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' });
  return `${signingInput}.${signature.toString('base64url')}`;
}
