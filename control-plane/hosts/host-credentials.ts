import type { Clock } from '../../common/clock.js';
import { UnavailableError } from '../../common/errors.js';
import type { HostRecord, HostStateName, Store } from '../store/store.js';
import type { TokenIssuer } from '../tokens/token-issuer.js';
import type { IssuedToken } from '../tokens/token-kinds.js';

/** States in which a host may be given a credential. */
const CREDENTIALED_STATES: readonly HostStateName[] = ['enrolled', 'active'];
/**
 * Read-modify-write rounds a step makes before giving up: each lost round means
 * another writer changed the host meanwhile, which a few rounds outlast.
 */
const MAX_ATTEMPTS = 5;

/** Options of {@link HostCredentials}. */
export interface HostCredentialsOptions {
  store: Store;
  issuer: TokenIssuer;
  clock: Clock;
  hostTokenTtlMs: number;
}

/**
 * The steps of a host credential's life, each a read of the host and then a
 * write conditional on what was read (`Store.updateHost` with a
 * `HostExpectation`). No in-process lock guards them: two streams of one host,
 * or two control planes on one store, can race on every step, and the loser's
 * write does nothing (it reads again, or gives up) rather than minting a
 * generation twice, lowering the floor of valid generations, or undoing a
 * revoke.
 */
export class HostCredentials {
  readonly #options: HostCredentialsOptions;

  constructor(options: HostCredentialsOptions) {
    this.#options = options;
  }

  /**
   * The first credential of a host joining with its join token, which `leased`
   * (the host as `leaseJoinToken` returned it) is leased to `sessionId`. Any
   * credential issued to an earlier, unacknowledged attempt is superseded.
   * Undefined when the host changed since the lease (revoked, leased to
   * another stream, or given another credential).
   */
  async issueForJoin(leased: HostRecord, sessionId: string): Promise<IssuedToken | undefined> {
    const { store, issuer, hostTokenTtlMs } = this.#options;
    const generation = leased.credentialGeneration + 1;
    const joined = await issuer.issue({ kind: 'host', subject: leased.hostId, ttlMs: hostTokenTtlMs, generation });
    const updated = await store.updateHost(
      leased.hostId,
      {
        credentialGeneration: generation,
        minValidGeneration: generation,
        credentialIssuedAtMs: joined.claims.issuedAtMs,
        credentialExpiresAtMs: joined.claims.expiresAtMs,
      },
      { states: ['enrolled'], joinLeaseSessionId: sessionId, credentialGeneration: leased.credentialGeneration },
    );
    return updated === undefined ? undefined : joined;
  }

  /**
   * The joining host stored its first credential: the join token is burnt and
   * the host is active. Only while the join token is still leased to
   * `sessionId` and the host not revoked: a revoke landing between the join
   * and its Ack stays. Resolves with the host as it is now.
   */
  async completeJoin(hostId: string, sessionId: string): Promise<{ isCompleted: boolean; host: HostRecord | undefined }> {
    const { store } = this.#options;
    const completed = await store.updateHost(
      hostId,
      { state: 'active', joinSecretHash: null, joinLeaseSessionId: null },
      { states: ['enrolled'], joinLeaseSessionId: sessionId },
    );
    if (completed !== undefined) return { isCompleted: true, host: completed };
    return { isCompleted: false, host: await store.getHost(hostId) };
  }

  /**
   * Issues the host its next credential, unless it is gone or revoked
   * (undefined). Each generation is minted once: a writer that lost the race
   * for one reads again and mints the next.
   */
  async rotate(hostId: string): Promise<IssuedToken | undefined> {
    const { store, issuer, clock, hostTokenTtlMs } = this.#options;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const host = await store.getHost(hostId);
      if (host === undefined || host.state === 'revoked') return undefined;
      const generation = host.credentialGeneration + 1;
      const issued = await issuer.issue({ kind: 'host', subject: hostId, ttlMs: hostTokenTtlMs, generation });
      const updated = await store.updateHost(
        hostId,
        {
          credentialGeneration: generation,
          credentialIssuedAtMs: issued.claims.issuedAtMs,
          credentialExpiresAtMs: issued.claims.expiresAtMs,
          lastSeenMs: clock.now(),
        },
        { states: CREDENTIALED_STATES, credentialGeneration: host.credentialGeneration },
      );
      if (updated !== undefined) return issued;
    }
    throw new UnavailableError(`the credential of host ${hostId} kept changing while it was being rotated`);
  }

  /**
   * The host stored the credential of `generation`: older ones are refused
   * from now on. The floor only ever rises, whatever order two such writes
   * land in. Resolves true if it rose.
   */
  async acknowledge(hostId: string, generation: number): Promise<boolean> {
    const { store } = this.#options;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const host = await store.getHost(hostId);
      if (host === undefined || host.state === 'revoked') return false;
      if (generation > host.credentialGeneration || generation <= host.minValidGeneration) return false;
      const updated = await store.updateHost(
        hostId,
        { minValidGeneration: generation },
        { states: CREDENTIALED_STATES, minValidGeneration: host.minValidGeneration },
      );
      if (updated !== undefined) return true;
    }
    throw new UnavailableError(`host ${hostId} kept changing while its credential was acknowledged`);
  }
}
