import { randomUUID, sign, type KeyObject, type SignKeyObjectInput } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { SIGNING_ALGORITHM, type ActiveKey, type SigningKeyRing } from './signing-keys.js';
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
   * Signs a token of `request.kind`. The signature is computed on libuv's thread
   * pool (`crypto.sign` with a callback), off the event loop: in a rotation storm
   * signing was a quarter to a third of the event loop's busy time (issue 16's
   * profile), and the loop was the bound. The key is checked again once the
   * signature is back: if it stopped signing meanwhile (a revocation or a
   * rotation of the signing key landed), the token is signed again with the key
   * active now, synchronously, so no token of a key that stopped signing before
   * `issue` resolves ever leaves here (a revoked key's token in a holder with no
   * rotation scheduled for it: what signing synchronously used to rule out).
   */
  async issue(request: IssueRequest): Promise<IssuedToken> {
    const unsigned = this.#prepare(request);
    const signature = await signAsync(unsigned.signingInput, unsigned.key);
    if (this.#keysFor(request).active().kid === unsigned.key.kid) return finish(unsigned, signature);
    // The key stopped signing while the signature was computed: sign again, with the key active now, at once.
    const again = this.#prepare(request);
    return finish(again, signSync(again.signingInput, again.key));
  }

  #isFederated(request: IssueRequest): boolean {
    return request.kind === 'audience' && this.#options.federation !== undefined;
  }

  #keysFor(request: IssueRequest): SigningKeyRing {
    const { federation } = this.#options;
    return this.#isFederated(request) && federation !== undefined ? federation.keys : this.#options.keys;
  }

  /** The token of `request` but its signature: the active key, the claims, the signing input. */
  #prepare(request: IssueRequest): UnsignedToken {
    const { clock, federation } = this.#options;
    const isFederated = this.#isFederated(request);
    const issuer = isFederated && federation !== undefined ? federation.issuer : this.#options.issuer;
    const key = this.#keysFor(request).active();
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
    const header = { alg: key.algorithm, kid: key.kid, typ: TOKEN_TYPES[request.kind] };
    return {
      key,
      signingInput: `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`,
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

/** A token but its signature. */
interface UnsignedToken {
  key: ActiveKey;
  /** `base64url(header).base64url(payload)`: what is signed. */
  signingInput: string;
  claims: IssuedToken['claims'];
}

/** The compact JWS (RFC 7515) of `unsigned` with its `signature`. */
function finish(unsigned: UnsignedToken, signature: Buffer): IssuedToken {
  return { token: `${unsigned.signingInput}.${signature.toString('base64url')}`, claims: unsigned.claims };
}

/**
 * Signs a compact JWS's signing input with `node:crypto`: EdDSA (Ed25519), or
 * ES256 (P-256 and SHA-256, the signature as JOSE's fixed-width r‖s,
 * `ieee-p1363`, never DER). jose's SignJWT signs through WebCrypto, whose
 * promise and key checks made signing over a quarter of a rotation's cost
 * (issue 16's profile); `crypto.sign` is the same signature. Ed25519 is
 * deterministic, so the token is byte for byte what jose produces for the same
 * header and claims (tested); verification and the JWKS stay with jose.
 */
function signArgs(signingInput: string, key: ActiveKey): [algorithm: string | null, data: Buffer, key: KeyObject | SignKeyObjectInput] {
  const data = Buffer.from(signingInput);
  return key.algorithm === SIGNING_ALGORITHM ? [null, data, key.signingKey] : ['sha256', data, { key: key.signingKey, dsaEncoding: 'ieee-p1363' }];
}

/** Signs on the event loop (about 40 µs for Ed25519). */
function signSync(signingInput: string, key: ActiveKey): Buffer {
  return sign(...signArgs(signingInput, key));
}

/** Signs on libuv's thread pool: the event loop spends about 7 µs on it instead of 40. */
function signAsync(signingInput: string, key: ActiveKey): Promise<Buffer> {
  const [algorithm, data, keyInput] = signArgs(signingInput, key);
  return new Promise((resolve, reject) => {
    sign(algorithm, data, keyInput, (err, signature) => (err === null ? resolve(signature) : reject(err)));
  });
}
