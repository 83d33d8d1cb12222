import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK } from 'jose';
import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { SigningKeyRecord, Store } from '../store/store.js';

/** The one signing algorithm; pinned on verify. */
export const SIGNING_ALGORITHM = 'EdDSA';

interface LoadedKey {
  record: SigningKeyRecord;
  publicKey: CryptoKey;
  privateKey: CryptoKey | undefined;
  publicJwk: JWK;
}

/** The active signing key. */
export interface ActiveKey {
  kid: string;
  privateKey: CryptoKey;
}

/**
 * The control plane's Ed25519 keys, persisted in the store. One key signs; every
 * key stays published and verifying until the last token it signed has expired.
 */
export class SigningKeyRing {
  readonly #store: Store;
  readonly #clock: Clock;
  readonly #logger: Logger;
  #keys: LoadedKey[] = [];

  private constructor(store: Store, clock: Clock, logger: Logger) {
    this.#store = store;
    this.#clock = clock;
    this.#logger = logger;
  }

  /** Loads the keys from the store, creating the first one if there is none. */
  static async load(store: Store, clock: Clock, logger: Logger): Promise<SigningKeyRing> {
    const ring = new SigningKeyRing(store, clock, logger);
    await ring.#reload();
    if (ring.#keys.every((key) => key.record.retiredAtMs !== null)) await ring.#create();
    return ring;
  }

  async #reload(): Promise<void> {
    const records = await this.#store.listSigningKeys();
    this.#keys = await Promise.all(
      records.map(async (record): Promise<LoadedKey> => {
        const publicJwk = JSON.parse(record.publicJwk) as JWK;
        const publicKey = (await importJWK(publicJwk, SIGNING_ALGORITHM)) as CryptoKey;
        const privateKey =
          record.retiredAtMs === null
            ? ((await importJWK(JSON.parse(record.privateJwk) as JWK, SIGNING_ALGORITHM)) as CryptoKey)
            : undefined;
        return { record, publicKey, privateKey, publicJwk };
      }),
    );
  }

  async #create(): Promise<string> {
    const { publicKey, privateKey } = await generateKeyPair(SIGNING_ALGORITHM, { crv: 'Ed25519', extractable: true });
    const kid = randomUUID();
    const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: SIGNING_ALGORITHM, use: 'sig' };
    const privateJwk = { ...(await exportJWK(privateKey)), kid, alg: SIGNING_ALGORITHM };
    await this.#store.insertSigningKey({
      kid,
      privateJwk: JSON.stringify(privateJwk),
      publicJwk: JSON.stringify(publicJwk),
      createdAtMs: this.#clock.now(),
      retiredAtMs: null,
      verifyUntilMs: null,
    });
    await this.#reload();
    this.#logger.info({ kid }, 'signing key created');
    return kid;
  }

  /** The key that signs new tokens. */
  active(): ActiveKey {
    for (let i = this.#keys.length - 1; i >= 0; i--) {
      const key = this.#keys[i];
      if (key?.privateKey !== undefined && key.record.retiredAtMs === null) return { kid: key.record.kid, privateKey: key.privateKey };
    }
    throw new Error('no active signing key');
  }

  /** The public key for `kid`, if it is known and still verifying at `nowMs`. */
  publicKey(kid: string, nowMs: number): CryptoKey | undefined {
    const key = this.#keys.find((candidate) => candidate.record.kid === kid);
    if (key === undefined) return undefined;
    if (key.record.verifyUntilMs !== null && nowMs >= key.record.verifyUntilMs) return undefined;
    return key.publicKey;
  }

  /** The JWKS document of every key still verifying at `nowMs`. */
  jwks(nowMs: number): { keys: JWK[] } {
    return {
      keys: this.#keys
        .filter((key) => key.record.verifyUntilMs === null || nowMs < key.record.verifyUntilMs)
        .map((key) => key.publicJwk),
    };
  }

  /** Every key's public record (no private material), oldest first. */
  list(): Omit<SigningKeyRecord, 'privateJwk'>[] {
    return this.#keys.map(({ record }) => ({
      kid: record.kid,
      publicJwk: record.publicJwk,
      createdAtMs: record.createdAtMs,
      retiredAtMs: record.retiredAtMs,
      verifyUntilMs: record.verifyUntilMs,
    }));
  }

  /**
   * Makes a new key the signer. The old one keeps verifying for `maxTokenLifetimeMs`
   * (the longest TTL plus clock tolerance), the life of the last token it signed.
   * The new key is in the ring (and so in the JWKS) before it signs anything.
   */
  async rotate(maxTokenLifetimeMs: number): Promise<string> {
    const nowMs = this.#clock.now();
    const previous = this.active();
    const kid = await this.#create();
    await this.#store.updateSigningKey(previous.kid, { retiredAtMs: nowMs, verifyUntilMs: nowMs + maxTokenLifetimeMs });
    await this.#reload();
    this.#logger.info({ kid, retiredKid: previous.kid }, 'signing key rotated');
    return kid;
  }

  /** Deletes keys whose verification window has passed. */
  async prune(): Promise<void> {
    const nowMs = this.#clock.now();
    const expired = this.#keys.filter((key) => key.record.verifyUntilMs !== null && nowMs >= key.record.verifyUntilMs);
    for (const key of expired) await this.#store.deleteSigningKey(key.record.kid);
    if (expired.length > 0) await this.#reload();
  }
}
