import { KeyObject, randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK } from 'jose';
import type { Clock } from '../../common/clock.js';
import { AlreadyExistsError, FailedPreconditionError, NotFoundError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { SigningKeyRecord, SigningKeyState, SigningKeyTransition, Store } from '../store/store.js';

/** The algorithm of the control plane's own tokens (agent, host, and audience tokens without an issuer URL); pinned on verify. */
export const SIGNING_ALGORITHM = 'EdDSA';

/** The algorithm of federation keys: audience tokens with an issuer URL (AWS STS and GCP refuse EdDSA). */
export const FEDERATION_ALGORITHM = 'ES256';

/** The algorithms a key ring signs with. */
export type SigningAlgorithm = typeof SIGNING_ALGORITHM | typeof FEDERATION_ALGORITHM;

/**
 * How long the JWKS may be cached (the HTTP `Cache-Control: max-age` of
 * `/.well-known/jwks.json`). A standby key is published longer than this before
 * it signs, so a service holding a cached JWKS already has it.
 */
export const JWKS_MAX_AGE_MS = 60_000;

/** The purpose of the keys that sign Tether's own tokens (one signer and one standby per purpose). */
export const TOKEN_KEY_PURPOSE = 'tokens';

/** The purpose of the keys that sign audience tokens when an issuer URL is set (ES256, in the federation JWKS). */
export const AUDIENCE_KEY_PURPOSE = 'audience';

/** The most keys the federation JWKS may hold: AWS STS accepts at most 100 keys in a JWKS. */
export const MAX_FEDERATION_KEYS = 100;

/** How often the pruner looks for keys whose last token has expired, at most. */
const PRUNE_CHECK_MS = 60_000;

/** Attempts at a key transition another control plane keeps winning, before giving up. */
const TRANSITION_ATTEMPTS = 3;

interface LoadedKey {
  record: SigningKeyRecord;
  publicKey: CryptoKey;
  privateKey: CryptoKey | undefined;
  /** The private half as a `node:crypto` key: what the token issuer signs with (see token-issuer.ts for why). */
  signingKey: KeyObject | undefined;
  publicJwk: JWK;
}

/** The active signing key. */
export interface ActiveKey {
  kid: string;
  algorithm: SigningAlgorithm;
  privateKey: CryptoKey;
  /** The same private key as a `node:crypto` KeyObject, for `crypto.sign`. */
  signingKey: KeyObject;
}

/** A key as operators see it: its state and times, no key material. */
export type SigningKeyInfo = Omit<SigningKeyRecord, 'privateJwk' | 'publicJwk'>;

/** What {@link SigningKeyRing.rotate} did. */
export interface KeyRotation {
  /** The key that signs now (the standby it promoted). */
  kid: string;
  /** The key that stopped signing; verifying-only until `retiredVerifyUntilMs`. */
  retiredKid: string;
  retiredVerifyUntilMs: number;
  /** The new standby, published now, promotable once the JWKS cache lifetime has passed. */
  standbyKid: string;
}

/** What {@link SigningKeyRing.revoke} did. */
export interface KeyRevocation {
  kid: string;
  /** The state the key was in. */
  previousState: SigningKeyState;
  /** The key that signs now. */
  signerKid: string;
  /**
   * When the revoked key signed: tokens issued in `[signedFromMs, signedUntilMs]`
   * may carry it. Undefined if it never signed (a standby).
   */
  signedPeriod: { fromMs: number; untilMs: number } | undefined;
}

/** Options of {@link SigningKeyRing.load}. */
export interface SigningKeyRingOptions {
  store: Store;
  clock: Clock;
  logger: Logger;
  /** The longest any token lives plus the clock tolerance: how long a retired key keeps verifying. */
  maxTokenLifetimeMs: number;
  /** How long the JWKS may be cached; default {@link JWKS_MAX_AGE_MS}. */
  jwksMaxAgeMs?: number;
  /** What the keys sign; default {@link TOKEN_KEY_PURPOSE}. Each purpose has its own signer, standby and JWKS. */
  purpose?: string;
  /** Default {@link SIGNING_ALGORITHM}; pinned: a ring's keys are of this algorithm only. */
  algorithm?: SigningAlgorithm;
  /**
   * The most keys the JWKS may hold (standby, signer and retired keys still
   * verifying); a rotation that would publish one more is refused. Default: no bound.
   */
  maxPublishedKeys?: number;
  /** Told of each rotation (`kid`: the new signer) and revocation, once it is in the store. */
  onKeyChange?: (change: { kid: string; purpose: string; change: 'rotated' | 'revoked'; detail: string }) => void;
}

/**
 * The control plane's keys of one purpose (Ed25519 for its own tokens, P-256
 * for federation), persisted in the store, each `standby`,
 * `signing`, `verifying-only` or `revoked` (see {@link SigningKeyState}). One key
 * signs; a published standby is always ready to take over, so a rotation never
 * makes anyone wait and never signs with a key a cached JWKS lacks. The store
 * keeps one signer and one standby per purpose, so rotations racing (here or in
 * another control plane on the same store) cannot leave two signers.
 */
export class SigningKeyRing {
  readonly #options: SigningKeyRingOptions;
  readonly #store: Store;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #jwksMaxAgeMs: number;
  readonly #purpose: string;
  readonly #algorithm: SigningAlgorithm;
  readonly #maxPublishedKeys: number;
  readonly #closing = new AbortController();
  #keys: LoadedKey[] = [];
  #pruning: Promise<void> | undefined;

  private constructor(options: SigningKeyRingOptions) {
    this.#options = options;
    this.#store = options.store;
    this.#clock = options.clock;
    this.#logger = options.logger;
    this.#jwksMaxAgeMs = options.jwksMaxAgeMs ?? JWKS_MAX_AGE_MS;
    this.#purpose = options.purpose ?? TOKEN_KEY_PURPOSE;
    this.#algorithm = options.algorithm ?? SIGNING_ALGORITHM;
    this.#maxPublishedKeys = options.maxPublishedKeys ?? Infinity;
    // A signer and a standby are always published, and a rotation adds one more key for a while.
    if (!(this.#maxPublishedKeys >= 3)) throw new FailedPreconditionError(`maxPublishedKeys must be at least 3, got ${this.#maxPublishedKeys}`);
  }

  /** What this ring's keys sign. */
  get purpose(): string {
    return this.#purpose;
  }

  /** The one algorithm of this ring's keys. */
  get algorithm(): SigningAlgorithm {
    return this.#algorithm;
  }

  /** Whether `kid` is one of this ring's keys (in any state, until pruned). */
  has(kid: string): boolean {
    return this.#keys.some((key) => key.record.kid === kid);
  }

  /**
   * Loads the keys from the store; makes sure one signs (promoting the standby,
   * or creating the very first key) and a standby is published; fixes the
   * verify-until of keys a migration or restore retired; drops expired keys.
   */
  static async load(options: SigningKeyRingOptions): Promise<SigningKeyRing> {
    const ring = new SigningKeyRing(options);
    // Only keys from before states existed lack a verify-until, and those were all of Tether's own tokens.
    if (ring.#purpose === TOKEN_KEY_PURPOSE) await ring.#store.fixSigningKeyVerifyUntil(ring.#clock.now() + options.maxTokenLifetimeMs);
    await ring.#reload();
    for (let attempt = 0; attempt < TRANSITION_ATTEMPTS && ring.#inState('signing') === undefined; attempt++) {
      const standby = ring.#inState('standby');
      if (standby === undefined) {
        // The very first key (or every signer revoked with no standby): nothing else could sign.
        await ring.#create('signing');
      } else {
        // No signer (a restore brought back a key revoked since): the standby takes over at once.
        await ring.#store.transitionSigningKeys([{ kid: standby.record.kid, from: 'standby', to: 'signing', atMs: ring.#clock.now() }]);
        await ring.#reload();
      }
    }
    if (ring.#inState('signing') === undefined) throw new FailedPreconditionError('no signing key could be made');
    await ring.#ensureStandby();
    await ring.prune();
    return ring;
  }

  async #reload(): Promise<void> {
    const records = (await this.#store.listSigningKeys()).filter((record) => record.purpose === this.#purpose);
    this.#keys = await Promise.all(
      records.map(async (record): Promise<LoadedKey> => {
        const publicJwk = JSON.parse(record.publicJwk) as JWK;
        const publicKey = (await importJWK(publicJwk, this.#algorithm)) as CryptoKey;
        const privateKey =
          record.privateJwk === null ? undefined : ((await importJWK(JSON.parse(record.privateJwk) as JWK, this.#algorithm)) as CryptoKey);
        return { record, publicKey, privateKey, signingKey: privateKey === undefined ? undefined : KeyObject.from(privateKey), publicJwk };
      }),
    );
  }

  #inState(state: SigningKeyState): LoadedKey | undefined {
    return this.#keys.find((key) => key.record.state === state);
  }

  /** Creates a key in `state`; false if the store already has one there (another control plane won). */
  async #create(state: 'signing' | 'standby'): Promise<boolean> {
    const algorithm = this.#algorithm;
    const { publicKey, privateKey } = await generateKeyPair(algorithm, algorithm === SIGNING_ALGORITHM ? { crv: 'Ed25519', extractable: true } : { extractable: true });
    const kid = randomUUID();
    const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: algorithm, use: 'sig' };
    const privateJwk = { ...(await exportJWK(privateKey)), kid, alg: algorithm };
    const nowMs = this.#clock.now();
    try {
      await this.#store.insertSigningKey({
        kid,
        purpose: this.#purpose,
        state,
        privateJwk: JSON.stringify(privateJwk),
        publicJwk: JSON.stringify(publicJwk),
        createdAtMs: nowMs,
        signingSinceMs: state === 'signing' ? nowMs : null,
        retiredAtMs: null,
        verifyUntilMs: null,
      });
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
      await this.#reload();
      return false;
    }
    await this.#reload();
    this.#logger.info({ kid, state, purpose: this.#purpose, alg: algorithm }, 'signing key created');
    return true;
  }

  async #ensureStandby(): Promise<void> {
    if (this.#inState('standby') === undefined) await this.#create('standby');
  }

  /** The key that signs new tokens. */
  active(): ActiveKey {
    const key = this.#inState('signing');
    if (key?.privateKey === undefined || key.signingKey === undefined) throw new FailedPreconditionError('no signing key');
    return { kid: key.record.kid, algorithm: this.#algorithm, privateKey: key.privateKey, signingKey: key.signingKey };
  }

  /** Whether `kid` was revoked: every token it signed is refused, for that reason. */
  isRevoked(kid: string): boolean {
    return this.#keys.some((key) => key.record.kid === kid && key.record.state === 'revoked');
  }

  /** The public key for `kid`, if it is known, not revoked and still verifying at `nowMs`. */
  publicKey(kid: string, nowMs: number): CryptoKey | undefined {
    const key = this.#keys.find((candidate) => candidate.record.kid === kid);
    return key !== undefined && isPublished(key.record, nowMs) ? key.publicKey : undefined;
  }

  /** The JWKS document at `nowMs`: the standby, the signer, and retired keys still verifying. */
  jwks(nowMs: number): { keys: JWK[] } {
    return { keys: this.#keys.filter((key) => isPublished(key.record, nowMs)).map((key) => key.publicJwk) };
  }

  /** Every key's state and times (no key material), oldest first. */
  list(): SigningKeyInfo[] {
    return this.#keys.map(({ record }) => ({
      kid: record.kid,
      purpose: record.purpose,
      state: record.state,
      createdAtMs: record.createdAtMs,
      signingSinceMs: record.signingSinceMs,
      retiredAtMs: record.retiredAtMs,
      verifyUntilMs: record.verifyUntilMs,
    }));
  }

  /**
   * Promotes the standby to signer and retires the signer to verifying-only
   * (its private half deleted) for the longest token lifetime; publishes a new
   * standby. Refused while the standby has been published no longer than the
   * JWKS cache lifetime (it would sign tokens a cached JWKS cannot verify), and
   * when another rotation won a race for the same keys.
   */
  async rotate(): Promise<KeyRotation> {
    await this.#reload();
    await this.#ensureStandby();
    const signer = this.#inState('signing');
    const standby = this.#inState('standby');
    if (signer === undefined || standby === undefined) throw new FailedPreconditionError('no signing or standby key; restart the control plane');
    const nowMs = this.#clock.now();
    const publishedMs = nowMs - standby.record.createdAtMs;
    const published = this.#keys.filter((key) => isPublished(key.record, nowMs));
    if (published.length + 1 > this.#maxPublishedKeys) {
      // Never by dropping a key early: a retired key verifies tokens still live until its verify-until.
      const nextOutMs = Math.min(...published.map((key) => (key.record.state === 'verifying-only' ? (key.record.verifyUntilMs ?? Infinity) : Infinity)));
      throw new FailedPreconditionError(
        `the ${this.#purpose} JWKS already holds ${published.length} keys, its bound is ${this.#maxPublishedKeys}: a rotation would publish one more. ` +
          (Number.isFinite(nextOutMs)
            ? `The oldest retired key leaves when its last token expires, at ${new Date(nextOutMs).toISOString()}; rotate again after that`
            : 'Revoke a key, or raise the bound'),
      );
    }
    if (publishedMs <= this.#jwksMaxAgeMs) {
      const waitS = Math.ceil((this.#jwksMaxAgeMs - publishedMs + 1) / 1000);
      throw new FailedPreconditionError(
        `the standby key ${standby.record.kid} has been published for ${Math.floor(publishedMs / 1000)} s, not longer than the JWKS cache lifetime ` +
          `(${this.#jwksMaxAgeMs / 1000} s); services with a cached JWKS would refuse its tokens. Rotate again in ${waitS} s`,
      );
    }
    const retiredVerifyUntilMs = nowMs + this.#options.maxTokenLifetimeMs;
    const isDone = await this.#store.transitionSigningKeys([
      { kid: signer.record.kid, from: 'signing', to: 'verifying-only', atMs: nowMs, verifyUntilMs: retiredVerifyUntilMs },
      { kid: standby.record.kid, from: 'standby', to: 'signing', atMs: nowMs },
    ]);
    await this.#reload();
    if (!isDone) throw new FailedPreconditionError('another rotation changed the signing keys first; see `keys ls`');
    await this.#ensureStandby();
    const standbyKid = this.#inState('standby')?.record.kid ?? '';
    this.#logger.info({ kid: standby.record.kid, retiredKid: signer.record.kid, standbyKid, verifyUntilMs: retiredVerifyUntilMs, purpose: this.#purpose }, 'signing key rotated');
    this.#options.onKeyChange?.({ kid: standby.record.kid, purpose: this.#purpose, change: 'rotated', detail: `${standby.record.kid} signs; ${signer.record.kid} verifies only, until its last token expires` });
    return { kid: standby.record.kid, retiredKid: signer.record.kid, retiredVerifyUntilMs, standbyKid };
  }

  /**
   * Revokes `kid` (compromised): from now on every token it signed is refused
   * and it is out of the JWKS; its private half is deleted. If it was the
   * signer, the standby takes over at once; if it was the standby, a new one is
   * published. Its row stays until the last token it could have signed expires,
   * so such a token is refused as signed by a revoked key rather than an unknown one.
   */
  async revoke(kid: string): Promise<KeyRevocation> {
    for (let attempt = 0; attempt < TRANSITION_ATTEMPTS; attempt++) {
      await this.#reload();
      const key = this.#keys.find((candidate) => candidate.record.kid === kid);
      if (key === undefined) throw new NotFoundError(`no signing key ${kid}`);
      const { record } = key;
      const nowMs = this.#clock.now();
      const signedPeriod =
        record.signingSinceMs === null ? undefined : { fromMs: record.signingSinceMs, untilMs: record.retiredAtMs ?? nowMs };
      if (record.state === 'revoked') {
        return { kid, previousState: 'revoked', signerKid: this.active().kid, signedPeriod };
      }
      const keepUntilMs = record.state === 'verifying-only' ? (record.verifyUntilMs ?? nowMs + this.#options.maxTokenLifetimeMs) : nowMs + this.#options.maxTokenLifetimeMs;
      const steps: SigningKeyTransition[] = [{ kid, from: record.state, to: 'revoked', atMs: nowMs, verifyUntilMs: keepUntilMs }];
      const standby = this.#inState('standby');
      if (record.state === 'signing' && standby !== undefined) steps.push({ kid: standby.record.kid, from: 'standby', to: 'signing', atMs: nowMs });
      if (!(await this.#store.transitionSigningKeys(steps))) continue;
      await this.#reload();
      // With no standby (never, unless the store was edited by hand) the signer is created here, with no publication delay.
      if (this.#inState('signing') === undefined) await this.#create('signing');
      await this.#ensureStandby();
      const signerKid = this.active().kid;
      this.#logger.warn({ kid, previousState: record.state, signerKid, purpose: this.#purpose }, 'signing key revoked');
      this.#options.onKeyChange?.({ kid, purpose: this.#purpose, change: 'revoked', detail: `${kid} revoked (it was ${record.state}); ${signerKid} signs` });
      return { kid, previousState: record.state, signerKid, signedPeriod };
    }
    throw new FailedPreconditionError(`signing key ${kid} kept changing under the revocation; try again`);
  }

  /** Deletes retired keys whose last token has expired; returns their kids. */
  async prune(): Promise<string[]> {
    const nowMs = this.#clock.now();
    const kids = await this.#store.deleteExpiredSigningKeys(nowMs);
    // The store deletes the expired keys of every purpose: another ring's prune may have taken ours already.
    const isStale = this.#keys.some((key) => isRetired(key.record.state) && key.record.verifyUntilMs !== null && key.record.verifyUntilMs <= nowMs);
    if (kids.length > 0 || isStale) {
      await this.#reload();
      this.#logger.info({ kids }, 'signing keys pruned: their last tokens have expired');
    }
    return kids;
  }

  /** Starts pruning on the clock: each retired key is deleted once its verify-until has passed. */
  start(): void {
    this.#pruning ??= this.#pruneLoop();
  }

  /** Stops the pruner. Idempotent. */
  async close(): Promise<void> {
    this.#closing.abort();
    await this.#pruning;
  }

  async #pruneLoop(): Promise<void> {
    const signal = this.#closing.signal;
    while (!signal.aborted) {
      const nowMs = this.#clock.now();
      const next = Math.min(...this.#keys.map((key) => (isRetired(key.record.state) ? (key.record.verifyUntilMs ?? Infinity) : Infinity)));
      if (next <= nowMs) {
        try {
          await this.prune();
        } catch (err) {
          this.#logger.error({ err }, 'signing key prune failed');
          await this.#clock.sleep(PRUNE_CHECK_MS, signal);
        }
        continue;
      }
      // Re-checked at least every PRUNE_CHECK_MS: a rotation or revocation adds keys while this waits.
      await this.#clock.sleep(Math.min(next - nowMs, PRUNE_CHECK_MS), signal);
    }
  }
}

function isRetired(state: SigningKeyState): boolean {
  return state === 'verifying-only' || state === 'revoked';
}

/** Whether a key is in the JWKS and verifies at `nowMs`. */
function isPublished(record: SigningKeyRecord, nowMs: number): boolean {
  if (record.state === 'revoked') return false;
  return record.verifyUntilMs === null || nowMs < record.verifyUntilMs;
}
