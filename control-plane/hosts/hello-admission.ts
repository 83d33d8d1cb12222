import type { Clock } from '../../common/clock.js';

/** Options of {@link HelloAdmission}. */
export interface HelloAdmissionOptions {
  clock: Clock;
  /** Uniform on [0, 1): spreads the retry-afters. */
  random: () => number;
  /** Hellos processed at once at most. Infinity: no bound (the gauges still count). */
  maxConcurrent: number;
  /**
   * The unit of a retry-after: a deferred host is asked to come back after
   * `unit` plus up to `unit` per round of excess (see {@link HelloAdmission.retryAfterMs}).
   * Also the window deferrals are counted in. Default 1 s.
   */
  retryUnitMs?: number;
}

/** Default of {@link HelloAdmissionOptions.maxConcurrent}. */
export const DEFAULT_MAX_CONCURRENT_HELLOS = 32;

/** A slot held while one Hello is processed; `release()` is idempotent. */
export interface HelloPermit {
  release(): void;
}

/**
 * Bounds how many Hellos the control plane processes at once. A control plane
 * coming back after an outage meets every host at once, each with its
 * reconnect delay near its floor; reconciling them all together (store writes,
 * resume, placement) would starve everything else on the event loop, admin and
 * agent calls included. Past the bound a Hello is deferred, not queued: the
 * stream ends with RESOURCE_EXHAUSTED and a retry-after, so a deferred host
 * costs nothing while it waits, and the retry-afters are spread over a window
 * that grows with the excess, so the herd comes back thinned out rather than
 * all together again.
 */
export class HelloAdmission {
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #maxConcurrent: number;
  readonly #unitMs: number;
  #inFlight = 0;
  #peakInFlight = 0;
  #deferredTotal = 0;
  /** Deferrals in the current window: the excess the next retry-after is spread over. */
  #deferredInWindow = 0;
  #windowStartMs: number;

  constructor(options: HelloAdmissionOptions) {
    this.#clock = options.clock;
    this.#random = options.random;
    this.#maxConcurrent = options.maxConcurrent;
    this.#unitMs = options.retryUnitMs ?? 1_000;
    this.#windowStartMs = options.clock.now();
  }

  /** Hellos being processed now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** The most Hellos processed at once since the last {@link resetPeak} (or ever). */
  get peakInFlight(): number {
    return this.#peakInFlight;
  }

  /** Hellos deferred so far. */
  get deferredTotal(): number {
    return this.#deferredTotal;
  }

  /** @internal Starts measuring {@link peakInFlight} afresh. */
  resetPeak(): void {
    this.#peakInFlight = this.#inFlight;
  }

  /** A permit to process one Hello, or undefined when the bound is reached (defer it with {@link retryAfterMs}). */
  tryAdmit(): HelloPermit | undefined {
    if (this.#inFlight >= this.#maxConcurrent) return undefined;
    this.#inFlight++;
    this.#peakInFlight = Math.max(this.#peakInFlight, this.#inFlight);
    let isReleased = false;
    return {
      release: () => {
        if (isReleased) return;
        isReleased = true;
        this.#inFlight--;
      },
    };
  }

  /**
   * Counts one deferral and returns the delay to ask of that host: `unit`
   * plus a uniform draw on [0, unit·rounds], where `rounds` is how many times
   * the bound the deferrals of the current window make (at least 1). With
   * `maxConcurrent` slots and Hellos taking about a unit each, that window
   * lets the deferred hosts through at about the rate the slots free up.
   */
  retryAfterMs(): number {
    const nowMs = this.#clock.now();
    if (nowMs >= this.#windowStartMs + this.#unitMs) {
      this.#windowStartMs = nowMs;
      this.#deferredInWindow = 0;
    }
    this.#deferredTotal++;
    this.#deferredInWindow++;
    const rounds = Number.isFinite(this.#maxConcurrent) ? Math.max(1, Math.ceil(this.#deferredInWindow / Math.max(1, this.#maxConcurrent))) : 1;
    const draw = this.#random();
    const u = Number.isNaN(draw) ? 0 : Math.min(1, Math.max(0, draw));
    return Math.floor(this.#unitMs + u * this.#unitMs * rounds);
  }
}
