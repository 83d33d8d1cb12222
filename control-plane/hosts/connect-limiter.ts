import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';

/** Options of {@link ConnectLimiter}. */
export interface ConnectLimiterOptions {
  clock: Clock;
  logger: Logger;
  /** The window failures are counted in. Default 10 s. */
  windowMs?: number;
  /** Failures one source address may have per window before its unverifiable attempts are refused unheard. Default 20. */
  maxFailuresPerSource?: number;
  /** Failures over all sources per window before every source that has failed at all in it is refused unheard. Default 500. */
  globalBudget?: number;
  /** Sources tracked at most (least recently failing forgotten first). Default 10,000. */
  maxSources?: number;
}

/** An attempt the limiter let be heard: charged as a failure from the start, so attempts in flight count too. */
export interface HeardAttempt {
  /** Settles the attempt once: a failure keeps its charge, anything else (verified, or the control plane busy) is refunded. */
  settle(isFailure: boolean): void;
}

/**
 * Limits Connect attempts with bad credentials by what an attacker cannot
 * choose for free: the source address (`peerSource`: IPv4, or an IPv6 /64), never the
 * identity a credential claims. Claimed identities are free to forge (host ids
 * are in every agent token's `host` claim): counting failures against them let
 * anyone lock a host out by naming it.
 *
 * Per window, a source past its own limit is refused unheard; past the global
 * budget, so is every source that has failed at all in the window. A source
 * with no failures is always heard. The limiter only says whether an attempt
 * that cannot prove itself cheaply may be heard: the caller still verifies a
 * bearer token from a refused source (a signature check) and lets it in if it
 * is valid, so no failure anywhere can deny the holder of a valid credential.
 * Failures are logged once per window, as a count.
 */
export class ConnectLimiter {
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #windowMs: number;
  readonly #maxPerSource: number;
  readonly #globalBudget: number;
  readonly #maxSources: number;
  #windowStartMs: number;
  /** Failures this window per source, least recently failing first. */
  #failures = new Map<string, number>();
  #globalFailures = 0;
  #unheard = 0;
  #peakSources = 0;

  constructor(options: ConnectLimiterOptions) {
    this.#clock = options.clock;
    this.#logger = options.logger;
    this.#windowMs = options.windowMs ?? 10_000;
    this.#maxPerSource = options.maxFailuresPerSource ?? 20;
    this.#globalBudget = options.globalBudget ?? 500;
    this.#maxSources = options.maxSources ?? 10_000;
    this.#windowStartMs = options.clock.now();
  }

  /** Sources in the failure table now (bounded by `maxSources`). */
  get trackedSources(): number {
    return this.#failures.size;
  }

  /** The most sources the failure table has held since this limiter was made. */
  get peakTrackedSources(): number {
    return this.#peakSources;
  }

  /** Whether an attempt from `source` that cannot prove itself should be refused without being heard. */
  isRefused(source: string): boolean {
    this.#roll();
    const count = this.#failures.get(source) ?? 0;
    return count >= this.#maxPerSource || (count > 0 && this.#globalFailures >= this.#globalBudget);
  }

  /**
   * Lets an attempt from `source` be heard, or undefined if it is not (counted
   * as `unheard` in the window's log line: a join token refused unchecked, a
   * bearer token checked by its signature alone). A heard attempt is charged as a failure until it
   * settles: otherwise every attempt already in flight when the limit was
   * reached would be heard too, and a flood's concurrency would be its budget.
   */
  tryHear(source: string): HeardAttempt | undefined {
    if (this.isRefused(source)) {
      this.#unheard++;
      return undefined;
    }
    this.recordFailure(source);
    const windowStartMs = this.#windowStartMs;
    let isSettled = false;
    return {
      settle: (isFailure: boolean): void => {
        if (isSettled) return;
        isSettled = true;
        // A charge from a window already rolled was forgotten with it.
        if (isFailure || windowStartMs !== this.#windowStartMs) return;
        this.#globalFailures--;
        const count = (this.#failures.get(source) ?? 0) - 1;
        if (count <= 0) this.#failures.delete(source);
        else this.#failures.set(source, count);
      },
    };
  }

  /** Counts a failed attempt from `source`. */
  recordFailure(source: string): void {
    this.#roll();
    this.#globalFailures++;
    const count = (this.#failures.get(source) ?? 0) + 1;
    this.#failures.delete(source);
    this.#failures.set(source, count);
    if (this.#failures.size > this.#maxSources) {
      const oldest = this.#failures.keys().next();
      if (oldest.done !== true) this.#failures.delete(oldest.value);
    }
    this.#peakSources = Math.max(this.#peakSources, this.#failures.size);
  }

  /** Starts a new window when the current one is over, logging the last one's failures once. */
  #roll(): void {
    const nowMs = this.#clock.now();
    if (nowMs < this.#windowStartMs + this.#windowMs) return;
    if (this.#globalFailures > 0 || this.#unheard > 0) {
      let topSource = '';
      let topFailures = 0;
      for (const [source, count] of this.#failures) {
        if (count > topFailures) [topSource, topFailures] = [source, count];
      }
      this.#logger.warn(
        { failures: this.#globalFailures, unheard: this.#unheard, sources: this.#failures.size, topSource, topFailures, windowMs: this.#windowMs },
        'host connects with bad credentials',
      );
    }
    this.#windowStartMs = nowMs;
    this.#failures = new Map();
    this.#globalFailures = 0;
    this.#unheard = 0;
  }
}
