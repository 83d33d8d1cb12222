import type { Clock } from '../common/clock.js';
import { TokenExpiredError, TokenRevokedError, UnauthenticatedError } from '../common/errors.js';
import type { Credential } from '../gen/tether/v1/common.js';
import type { ReadOnlyCredentials } from './tools/credential-source.js';

/**
 * A holder's lifecycle:
 * - `empty`: no credential applied yet; `get()` throws.
 * - `holding`: has a credential; `get()` returns it until it expires.
 * - `revoked`: the agent stopped; `get()` throws from now on, `apply` is ignored.
 */
export type CredentialHolderState = 'empty' | 'holding' | 'revoked';

/** What {@link CredentialHolder.apply} did. */
export type ApplyResult = 'applied' | 'stale' | 'revoked';

/**
 * One agent's credential. Exactly one per agent; rotations for that agent are
 * applied here and nowhere else, and readers call `get()` at the moment of use.
 * Nothing registers it anywhere: when its agent goes, it is garbage.
 */
export class CredentialHolder implements ReadOnlyCredentials {
  readonly #clock: Clock;
  #state: CredentialHolderState = 'empty';
  #token = '';
  #expiresAtMs = 0;
  #generation = 0;
  #tokenId = '';
  #epoch = '';
  #readOnly: ReadOnlyCredentials | undefined;

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /** The holder's state. */
  get state(): CredentialHolderState {
    return this.#state;
  }

  /** The current token; throws when revoked, empty or expired. */
  get(): string {
    if (this.#state === 'revoked') throw new TokenRevokedError('credential revoked');
    if (this.#state === 'empty') throw new UnauthenticatedError('no credential yet');
    if (this.#clock.now() >= this.#expiresAtMs) throw new TokenExpiredError('credential expired');
    return this.#token;
  }

  /** When the current token expires (Unix ms); 0 when empty. */
  get expiresAtMs(): number {
    return this.#expiresAtMs;
  }

  /** The current generation; 0 when empty. */
  get generation(): number {
    return this.#generation;
  }

  /** The current token's id (jti): safe to log. */
  get tokenId(): string {
    return this.#tokenId;
  }

  /**
   * Takes `credential` unless it is older than (or the same as) what is held
   * within the same epoch. A new epoch (a restored store) resets the order.
   */
  apply(credential: Credential, epoch: string): ApplyResult {
    if (this.#state === 'revoked') return 'revoked';
    if (this.#state === 'holding' && epoch === this.#epoch && credential.generation <= this.#generation) return 'stale';
    this.#token = credential.token;
    this.#expiresAtMs = credential.expiresAtMs;
    this.#generation = credential.generation;
    this.#tokenId = credential.tokenId;
    this.#epoch = epoch;
    this.#state = 'holding';
    return 'applied';
  }

  /** Forgets the token for good. */
  revoke(): void {
    this.#state = 'revoked';
    this.#token = '';
  }

  #viewToken(): string {
    return this.get();
  }

  #viewExpiresAtMs(): number {
    return this.#expiresAtMs;
  }

  #viewGeneration(): number {
    return this.#generation;
  }

  /** A frozen view with no way to set or revoke: what agents and tools are given. */
  readOnly(): ReadOnlyCredentials {
    if (this.#readOnly === undefined) {
      // Bound methods, not closures: one view per agent, and under tsx each named closure (or bound module
      // function, which tsx names too) carries a property store of its own, ~256 B.
      this.#readOnly = Object.freeze(
        Object.create(null, {
          get: { value: this.#viewToken.bind(this), enumerable: true },
          expiresAtMs: { get: this.#viewExpiresAtMs.bind(this), enumerable: true },
          generation: { get: this.#viewGeneration.bind(this), enumerable: true },
        }) as ReadOnlyCredentials,
      );
    }
    return this.#readOnly;
  }
}
