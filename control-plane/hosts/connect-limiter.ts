import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';

/** Options of {@link ConnectLimiter}. */
export interface ConnectLimiterOptions {
  clock: Clock;
  logger: Logger;
  /** The window failures are counted in. Default 10 s. */
  windowMs?: number;
  /** Failures one presented identity may have per window before it is refused unheard. Default 5. */
  maxFailuresPerIdentity?: number;
  /** Failures over all identities per window before identities not known to be good are refused unheard. Default 500. */
  globalBudget?: number;
  /** Identities tracked at most (failing ones, and recently good ones, each). Default 10,000. */
  maxEntries?: number;
}

/**
 * Limits Connect attempts with bad credentials: a bounded table of failures
 * keyed by presented identity (the host id a join token or token names — a
 * bucket key, not trusted), plus a global budget per window. Past its own
 * limit an identity is refused without verifying anything; past the global
 * budget, others are refused unheard too. An identity that authenticated
 * recently is always heard, so hosts that were connected keep reconnecting
 * during a flood, and forged attempts under a real host's name cannot lock it
 * out. Failures are logged once per window, as a count.
 */
export class ConnectLimiter {
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #windowMs: number;
  readonly #maxPerIdentity: number;
  readonly #globalBudget: number;
  readonly #maxEntries: number;
  #windowStartMs: number;
  #failures = new Map<string, number>();
  #globalFailures = 0;
  #refused = 0;
  /** Identities that authenticated recently, oldest first. */
  readonly #good = new Map<string, true>();

  constructor(options: ConnectLimiterOptions) {
    this.#clock = options.clock;
    this.#logger = options.logger;
    this.#windowMs = options.windowMs ?? 10_000;
    this.#maxPerIdentity = options.maxFailuresPerIdentity ?? 5;
    this.#globalBudget = options.globalBudget ?? 500;
    this.#maxEntries = options.maxEntries ?? 10_000;
    this.#windowStartMs = options.clock.now();
  }

  /** Entries in the failure table (bounded by `maxEntries`). */
  get trackedIdentities(): number {
    return this.#failures.size;
  }

  /** Entries in the table of identities that authenticated recently (bounded by `maxEntries`). */
  get trustedIdentities(): number {
    return this.#good.size;
  }

  /** Whether an attempt presenting `identity` should be refused without being verified. */
  isRefused(identity: string): boolean {
    this.#roll();
    // A host that authenticated recently is always heard: failures presented under its
    // (unverified) name by someone else must not lock it out.
    if (this.#good.has(identity)) return false;
    const refused = (this.#failures.get(identity) ?? 0) >= this.#maxPerIdentity || this.#globalFailures >= this.#globalBudget;
    if (refused) this.#refused++;
    return refused;
  }

  /** Counts a failed attempt. */
  recordFailure(identity: string): void {
    this.#roll();
    this.#globalFailures++;
    const count = (this.#failures.get(identity) ?? 0) + 1;
    this.#failures.delete(identity);
    this.#failures.set(identity, count);
    if (this.#failures.size > this.#maxEntries) {
      const oldest = this.#failures.keys().next();
      if (oldest.done !== true) this.#failures.delete(oldest.value);
    }
  }

  /** Remembers an identity that authenticated. */
  recordSuccess(identity: string): void {
    this.#failures.delete(identity);
    this.#good.delete(identity);
    this.#good.set(identity, true);
    if (this.#good.size > this.#maxEntries) {
      const oldest = this.#good.keys().next();
      if (oldest.done !== true) this.#good.delete(oldest.value);
    }
  }

  /** Starts a new window when the current one is over, logging the last one's failures once. */
  #roll(): void {
    const nowMs = this.#clock.now();
    if (nowMs < this.#windowStartMs + this.#windowMs) return;
    if (this.#globalFailures > 0 || this.#refused > 0) {
      this.#logger.warn(
        { failures: this.#globalFailures, refusedUnheard: this.#refused, identities: this.#failures.size, windowMs: this.#windowMs },
        'host connects with bad credentials',
      );
    }
    this.#windowStartMs = nowMs;
    this.#failures = new Map();
    this.#globalFailures = 0;
    this.#refused = 0;
  }
}
