import type * as grpc from '@grpc/grpc-js';
import type { Clock } from '../../common/clock.js';
import { ClosedError, InvalidArgumentError, UnavailableError } from '../../common/errors.js';
import type { MintTokenResponse } from '../../gen/tether/v1/agent.js';
import { AgentClient, type CallOptions } from './agent-client.js';
import type { AsyncCredentialSource, CredentialSource } from './credential-source.js';

/** What mints audience tokens: an {@link AgentClient} (or a fake in tests). */
export interface AudienceTokenMinter {
  /** AgentService.MintToken, called as the agent. */
  mintToken(audience: string, options?: CallOptions): Promise<MintTokenResponse>;
}

/** A token for one audience and what a tool may want to know about it without parsing it. */
export interface AudienceToken {
  /** The JWT: send it as `authorization: Bearer <token>` to its audience only; never log it. */
  readonly token: string;
  /** The service it is for (`aud`). */
  readonly audience: string;
  /** Unix ms, by the control plane's clock. */
  readonly issuedAtMs: number;
  /** Unix ms; never later than the agent token it was minted with. */
  readonly expiresAtMs: number;
  /** The generation of the agent token it was minted with. */
  readonly generation: number;
  readonly keyId: string;
  /** The JWT id (jti): safe to log, unlike the token. */
  readonly tokenId: string;
}

/** When a cached audience token is replaced. */
export interface AudienceRefreshPolicy {
  /** Refresh once less than this fraction of the token's life is left. Default 0.2. */
  refreshFraction: number;
  /** …or less than this many milliseconds, whichever comes first. Default 30 s. */
  refreshMarginMs: number;
}

/** The default {@link AudienceRefreshPolicy}: refresh at 20 % of life left, or 30 s, whichever comes first. */
export const DEFAULT_AUDIENCE_REFRESH: Readonly<AudienceRefreshPolicy> = Object.freeze({ refreshFraction: 0.2, refreshMarginMs: 30_000 });

/**
 * Whether a token issued at `issuedAtMs` and expiring at `expiresAtMs` should
 * be replaced at `nowMs`: less than `refreshFraction` of its life, or less than
 * `refreshMarginMs`, is left. A token already expired is always stale.
 */
export function isAudienceTokenStale(
  nowMs: number,
  issuedAtMs: number,
  expiresAtMs: number,
  policy: AudienceRefreshPolicy = DEFAULT_AUDIENCE_REFRESH,
): boolean {
  const leftMs = expiresAtMs - nowMs;
  if (leftMs <= 0) return true;
  const lifeMs = Math.max(0, expiresAtMs - issuedAtMs);
  return leftMs < Math.max(lifeMs * policy.refreshFraction, policy.refreshMarginMs);
}

/** Where {@link AudienceTokens} mints: an existing client of the agent's (not closed by `close()`). */
export interface AudienceTokensFromClient {
  client: AudienceTokenMinter;
}

/** Where {@link AudienceTokens} mints: a client it makes, and closes, of its own. */
export interface AudienceTokensFromSource {
  /** The control plane, `host:port`. */
  target: string;
  /** The agent's own credential, read at each mint. */
  source: CredentialSource;
  /** TLS channel credentials; without them, plaintext to loopback only (else InvalidArgumentError). */
  channelCredentials?: grpc.ChannelCredentials;
  /** grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

/** Options of {@link AudienceTokens}. */
export type AudienceTokensOptions = (AudienceTokensFromClient | AudienceTokensFromSource) & {
  /** The clock that decides staleness: the agent's (`context.clock`). */
  clock: Clock;
  /** When to replace a cached token; {@link DEFAULT_AUDIENCE_REFRESH} by default. */
  refresh?: Partial<AudienceRefreshPolicy>;
  /** Audiences cached at most; the least recently minted is dropped beyond. Default 64. */
  maxAudiences?: number;
  /** Closes the cache when it aborts (give the agent's `context.signal`). */
  signal?: AbortSignal;
};

/**
 * The lifecycle of {@link AudienceTokens}:
 * - `open`: mints and caches.
 * - `closed`: cache dropped, owned client closed; `tokenFor` throws ClosedError.
 */
export type AudienceTokensState = 'open' | 'closed';

interface CacheEntry {
  token: AudienceToken;
}

/**
 * One mint shared by every caller asking for the same audience meanwhile. It
 * runs under its own controller, never a caller's signal: one caller giving up
 * must not cancel the token the others are waiting for. It is aborted only when
 * every waiter has gone (or the cache closes).
 */
interface SharedMint {
  readonly promise: Promise<AudienceToken>;
  readonly controller: AbortController;
  waiters: number;
}

/**
 * Tokens for other services, one cache per agent (never shared, never global):
 * `tokenFor(audience)` returns the cached token for `audience` while it is
 * fresh, and mints a new one through AgentService.MintToken once less than
 * 20 % of its life or 30 s is left (configurable). Concurrent requests for one
 * audience share one mint; a caller's `signal` ends only its own wait, and the
 * mint is cancelled only once every caller waiting on it has gone. If a refresh fails while the cached token has not
 * expired yet, the cached one is returned (a brief control-plane outage does
 * not fail tool calls); otherwise the typed error is thrown. Time is read from
 * the injected clock only.
 */
export class AudienceTokens {
  readonly #minter: AudienceTokenMinter;
  readonly #ownedClient: AgentClient | undefined;
  readonly #clock: Clock;
  readonly #policy: AudienceRefreshPolicy;
  readonly #maxAudiences: number;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => this.close();
  readonly #cache = new Map<string, CacheEntry>();
  readonly #inFlight = new Map<string, SharedMint>();
  #state: AudienceTokensState = 'open';

  /** Makes the cache; with `target` and `source`, throws InvalidArgumentError for a plaintext non-loopback target. */
  constructor(options: AudienceTokensOptions) {
    if ('client' in options) {
      this.#minter = options.client;
    } else {
      this.#ownedClient = new AgentClient({
        target: options.target,
        source: options.source,
        ...(options.channelCredentials === undefined ? {} : { channelCredentials: options.channelCredentials }),
        ...(options.channelOptions === undefined ? {} : { channelOptions: options.channelOptions }),
      });
      this.#minter = this.#ownedClient;
    }
    this.#clock = options.clock;
    this.#policy = { ...DEFAULT_AUDIENCE_REFRESH, ...options.refresh };
    this.#maxAudiences = Math.max(1, options.maxAudiences ?? 64);
    this.#signal = options.signal;
    if (this.#signal?.aborted === true) this.close();
    else this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** The cache's state. */
  get state(): AudienceTokensState {
    return this.#state;
  }

  /**
   * A token for `audience`, cached while fresh. Rejects with ClosedError once
   * closed, InvalidArgumentError / PermissionDeniedError for an audience the
   * control plane will not mint for, or the typed error of a failed mint.
   */
  async tokenFor(audience: string, options: CallOptions = {}): Promise<AudienceToken> {
    if (this.#state === 'closed') throw new ClosedError('AudienceTokens');
    if (audience === '') throw new InvalidArgumentError('audience is required');
    const cached = this.#cache.get(audience);
    const nowMs = this.#clock.now();
    if (cached !== undefined && !isAudienceTokenStale(nowMs, cached.token.issuedAtMs, cached.token.expiresAtMs, this.#policy)) {
      return cached.token;
    }
    try {
      return await this.#mint(audience, options);
    } catch (err) {
      // The caller gave up: it asked for nothing more.
      if (options.signal?.aborted === true) throw err;
      // Still valid, only due for replacement: better than failing the call; the next call tries again.
      if (cached !== undefined && this.#state === 'open' && this.#clock.now() < cached.token.expiresAtMs) return cached.token;
      throw err;
    }
  }

  /**
   * A source for `audience` to hand to `bearerInterceptor`, `callCredentials`,
   * `bearerChannel` or `fetchAs`: each call reads `tokenFor(audience)`. Frozen.
   */
  source(audience: string): AsyncCredentialSource {
    return Object.freeze({ get: async (): Promise<string> => (await this.tokenFor(audience)).token });
  }

  /** What is cached for `audience`, without the token (for diagnostics and logs), or undefined. */
  describe(audience: string): Omit<AudienceToken, 'token'> | undefined {
    const cached = this.#cache.get(audience)?.token;
    if (cached === undefined) return undefined;
    const { token: _token, ...rest } = cached;
    return rest;
  }

  /** Drops every cached token and closes the client it made, if any. Idempotent. */
  close(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#cache.clear();
    for (const shared of this.#inFlight.values()) shared.controller.abort();
    this.#inFlight.clear();
    this.#ownedClient?.close();
  }

  /**
   * Waits for the shared mint of `audience` (starting one if none runs), until
   * it settles or the caller's own `signal` aborts, whichever comes first. A
   * caller that stops waiting leaves the mint running for the others.
   */
  #mint(audience: string, options: CallOptions): Promise<AudienceToken> {
    const signal = options.signal;
    if (signal?.aborted === true) return Promise.reject(abortError());
    const shared = this.#inFlight.get(audience) ?? this.#startMint(audience);
    shared.waiters++;
    return new Promise<AudienceToken>((resolve, reject) => {
      const onAbort = (): void => {
        leave();
        reject(abortError());
        // The last waiter gone: nobody wants this token any more.
        if (shared.waiters === 0 && this.#inFlight.get(audience) === shared) {
          this.#inFlight.delete(audience);
          shared.controller.abort();
        }
      };
      let hasLeft = false;
      const leave = (): void => {
        if (hasLeft) return;
        hasLeft = true;
        shared.waiters--;
        signal?.removeEventListener('abort', onAbort);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      shared.promise.then(
        (token) => {
          leave();
          resolve(token);
        },
        (err: unknown) => {
          leave();
          reject(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
  }

  #startMint(audience: string): SharedMint {
    const controller = new AbortController();
    const promise = this.#minter.mintToken(audience, { signal: controller.signal }).then(
      (response) => {
        if (this.#inFlight.get(audience) === shared) this.#inFlight.delete(audience);
        const token = toAudienceToken(response, audience);
        if (this.#state === 'open') this.#remember(audience, token);
        return token;
      },
      (err: unknown) => {
        if (this.#inFlight.get(audience) === shared) this.#inFlight.delete(audience);
        throw err;
      },
    );
    // A mint every waiter left settles with nobody listening; its rejection is expected, not unhandled.
    promise.catch(() => undefined);
    const shared: SharedMint = { promise, controller, waiters: 0 };
    this.#inFlight.set(audience, shared);
    return shared;
  }

  #remember(audience: string, token: AudienceToken): void {
    // Re-inserted at the end: the map's order is the order of minting.
    this.#cache.delete(audience);
    this.#cache.set(audience, { token });
    while (this.#cache.size > this.#maxAudiences) {
      const oldest = this.#cache.keys().next();
      if (oldest.done === true) break;
      this.#cache.delete(oldest.value);
    }
  }
}

/** What a caller whose own signal aborted is rejected with (as AgentClient does). */
function abortError(): DOMException {
  return new DOMException('aborted', 'AbortError');
}

/** Checks a MintToken response and freezes it into an {@link AudienceToken}. */
function toAudienceToken(response: MintTokenResponse, audience: string): AudienceToken {
  if (response.token === '' || response.audience !== audience || response.expiresAtMs <= response.issuedAtMs) {
    throw new UnavailableError('the control plane answered MintToken with an unusable token');
  }
  return Object.freeze({
    token: response.token,
    audience: response.audience,
    issuedAtMs: response.issuedAtMs,
    expiresAtMs: response.expiresAtMs,
    generation: response.generation,
    keyId: response.keyId,
    tokenId: response.tokenId,
  });
}
