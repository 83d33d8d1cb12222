import { createHash } from 'node:crypto';
import type { Metadata } from '@grpc/grpc-js';
import { decodeProtectedHeader } from 'jose';
import { TetherError, UnauthenticatedError } from '../../common/errors.js';
import { TOKEN_TYPES, type TokenClaims, type TokenKind } from '../tokens/token-kinds.js';
import { TokenRejectedError, type TokenVerifier } from '../tokens/token-verifier.js';
import { AdminTokenRefusedError, parseAdminToken, type AdminCaller, type AdminTokens } from './admin-tokens.js';
import { refusedIdentity, type RefusalLog } from './refusal-log.js';

/** An `authorization` header's scheme and credential. */
export interface PresentedCredential {
  scheme: 'bearer' | 'join';
  credential: string;
}

/** Reads `authorization: Bearer <token>` (or `Join <ID.SECRET>`) without throwing: what is wrong with it, if anything. */
export function parseAuthorization(metadata: Metadata): PresentedCredential | 'missing' | 'malformed' {
  const values = metadata.get('authorization');
  if (values.length !== 1 || typeof values[0] !== 'string') return 'missing';
  const match = /^(Bearer|Join) ([\x21-\x7e]+)$/i.exec(values[0].trim());
  if (match === null) return 'malformed';
  const scheme = match[1]?.toLowerCase() === 'join' ? 'join' : 'bearer';
  return { scheme, credential: match[2] ?? '' };
}

/** Reads `authorization: Bearer <token>` (or `Join <ID.SECRET>`); throws if absent or malformed. */
export function presentedCredential(metadata: Metadata): PresentedCredential {
  const presented = parseAuthorization(metadata);
  if (typeof presented === 'string') throw new UnauthenticatedError(`${presented} authorization`);
  return presented;
}

/** Hashes a secret for constant-time comparison (equal-length digests, whatever the inputs). */
export function secretDigest(secret: string): Buffer {
  return createHash('sha256').update(secret, 'utf8').digest();
}

/** The kinds of credential a caller can present, as a refusal names them. */
export type CredentialKind = 'admin' | TokenKind;

const KIND_NAMES: Readonly<Record<CredentialKind, string>> = {
  admin: 'an admin token',
  agent: 'an agent token',
  host: 'a host token',
  audience: 'an audience token (minted for another service)',
};

/**
 * A refusal of a credential of the wrong kind: it says what was expected and
 * what was presented (never the credential), so a caller who sent the admin
 * token to AgentService learns that, not "malformed".
 */
export class WrongCredentialKindError extends UnauthenticatedError {
  readonly reason = 'wrong-kind';

  constructor(expected: CredentialKind, presented: CredentialKind) {
    super(`${KIND_NAMES[expected]} is expected; this is ${KIND_NAMES[presented]}`);
  }
}

/** Which of Tether's JWT kinds a token's (unverified) `typ` header names; used only to word a refusal. */
function claimedTokenKind(token: string): TokenKind | undefined {
  let typ: unknown;
  try {
    typ = decodeProtectedHeader(token).typ;
  } catch {
    return undefined;
  }
  return (Object.keys(TOKEN_TYPES) as TokenKind[]).find((kind) => TOKEN_TYPES[kind] === typ);
}

/** Options of {@link Authenticator}. */
export interface AuthenticatorOptions {
  verifier: TokenVerifier;
  /** The admin tokens (the bootstrap one and those added through AdminService). */
  adminTokens: AdminTokens;
  /** Told of each refusal, with a fixed word for why (for metrics; never the credential). */
  onFailure?: (principal: 'admin' | 'agent' | 'host', reason: string) => void;
  /** Where refused agent and host credentials are logged, once per principal per window. */
  refusals?: RefusalLog;
  /** Told of each agent token accepted (its verified claims; never the token): what a verification log records. */
  onAgentVerified?: (claims: TokenClaims) => void;
}

/** A fixed word for why a credential was refused. */
function failureReason(err: unknown): string {
  if (err instanceof TokenRejectedError || err instanceof WrongCredentialKindError || err instanceof AdminTokenRefusedError) return err.reason;
  if (err instanceof TetherError) return err.code;
  return 'error';
}

/**
 * Decides who is calling. Each principal is accepted by exactly one service:
 * the admin token by AdminService, agent tokens by AgentService, host tokens by
 * HostService.Connect. Identity comes from the verified token, never a request.
 */
export class Authenticator {
  readonly #verifier: TokenVerifier;
  readonly #adminTokens: AdminTokens;
  readonly #onFailure: (principal: 'admin' | 'agent' | 'host', reason: string) => void;
  readonly #refusals: RefusalLog | undefined;
  readonly #onAgentVerified: ((claims: TokenClaims) => void) | undefined;

  constructor(options: AuthenticatorOptions) {
    this.#verifier = options.verifier;
    this.#adminTokens = options.adminTokens;
    this.#onFailure = options.onFailure ?? ((): void => undefined);
    this.#refusals = options.refusals;
    this.#onAgentVerified = options.onAgentVerified;
  }

  /**
   * The kind of credential `token` is, when it is one of ours but not `expected`:
   * an admin token (the bootstrap one compared in constant time, or one of the
   * `tadm_` form, unchecked: only the refusal's wording depends on it), or a JWT whose `typ` names
   * another kind. Asked only after a refusal, so the hot path never pays for it.
   */
  #otherKind(token: string, expected: CredentialKind): CredentialKind | undefined {
    if (token === '') return undefined;
    if (expected !== 'admin' && (parseAdminToken(token) !== undefined || this.#adminTokens.isBootstrap(token))) return 'admin';
    const kind = claimedTokenKind(token);
    return kind === expected ? undefined : kind;
  }

  #refused(principal: 'agent' | 'host', err: unknown, token: string): void {
    const reason = failureReason(err);
    this.#onFailure(principal, reason);
    this.#refusals?.record(principal, reason, refusedIdentity(token));
  }

  /**
   * Who calls AdminService: the admin token the call carries, checked against
   * the store (so a retired one is refused at once), with its id and role.
   */
  async adminCaller(metadata: Metadata): Promise<AdminCaller> {
    let presented: PresentedCredential;
    try {
      presented = presentedCredential(metadata);
    } catch (err) {
      this.#onFailure('admin', 'malformed');
      throw err;
    }
    try {
      if (presented.scheme !== 'bearer') throw new AdminTokenRefusedError('wrong-admin-token', 'not an admin token');
      return await this.#adminTokens.authenticate(presented.credential);
    } catch (err) {
      const other = presented.scheme === 'bearer' && err instanceof AdminTokenRefusedError && err.reason === 'wrong-admin-token' ? this.#otherKind(presented.credential, 'admin') : undefined;
      if (other !== undefined) {
        this.#onFailure('admin', 'wrong-kind');
        throw new WrongCredentialKindError('admin', other);
      }
      this.#onFailure('admin', failureReason(err));
      throw err;
    }
  }

  /** The verified claims of the agent token the call carries. */
  async agent(metadata: Metadata): Promise<TokenClaims> {
    let token = '';
    try {
      const presented = presentedCredential(metadata);
      if (presented.scheme !== 'bearer') throw new UnauthenticatedError('malformed authorization');
      token = presented.credential;
      const claims = await this.#verifier.verify(token, 'agent');
      this.#onAgentVerified?.(claims);
      return claims;
    } catch (err) {
      const other = err instanceof TokenRejectedError ? this.#otherKind(token, 'agent') : undefined;
      const refusal = other === undefined ? err : new WrongCredentialKindError('agent', other);
      this.#refused('agent', refusal, token);
      throw refusal;
    }
  }

  /** The verified claims of a host token. */
  async host(token: string): Promise<TokenClaims> {
    try {
      return await this.#verifier.verify(token, 'host');
    } catch (err) {
      const other = err instanceof TokenRejectedError ? this.#otherKind(token, 'host') : undefined;
      const refusal = other === undefined ? err : new WrongCredentialKindError('host', other);
      this.#refused('host', refusal, token);
      throw refusal;
    }
  }
}
