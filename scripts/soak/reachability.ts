/**
 * When one host could not reach the control plane: its stream down (not yet
 * welcomed again), or its link blackholed. The promise "no 401 while the host
 * reaches the control plane at least once in every third of a token's
 * lifetime" is judged against this: a 401 is excused only if an outage longer
 * than TTL/3 overlapped the TTL before it (tokens alive in it may have had no
 * chance to be replaced). Outages older than that are forgotten, so this stays
 * small however long the soak runs.
 */
export class Reachability {
  readonly #ttlMs: number;
  /** Finished outages, oldest first. */
  readonly #outages: { fromMs: number; toMs: number }[] = [];
  #downSinceMs: number | undefined;
  #isStreamUp = false;
  #isBlackholed = false;
  #longestMs = 0;

  constructor(ttlMs: number, nowMs: number) {
    this.#ttlMs = ttlMs;
    this.#downSinceMs = nowMs;
  }

  /** The longest outage seen so far (an open one counts up to now). */
  longestOutageMs(nowMs: number): number {
    return Math.max(this.#longestMs, this.#downSinceMs === undefined ? 0 : nowMs - this.#downSinceMs);
  }

  /** The host's stream was welcomed (true) or lost (false). */
  setStreamUp(isUp: boolean, nowMs: number): void {
    this.#isStreamUp = isUp;
    this.#update(nowMs);
  }

  /** Its link was blackholed (true) or healed (false). */
  setBlackholed(isBlackholed: boolean, nowMs: number): void {
    this.#isBlackholed = isBlackholed;
    this.#update(nowMs);
  }

  /** Whether a 401 at `atMs` falls outside the promise: an outage longer than TTL/3 overlapped [atMs - TTL, atMs]. */
  isExcused(atMs: number): boolean {
    const thirdMs = this.#ttlMs / 3;
    const windowStartMs = atMs - this.#ttlMs;
    if (this.#downSinceMs !== undefined && atMs - this.#downSinceMs > thirdMs) return true;
    return this.#outages.some((o) => o.toMs >= windowStartMs && o.toMs - o.fromMs > thirdMs);
  }

  #update(nowMs: number): void {
    const isUp = this.#isStreamUp && !this.#isBlackholed;
    if (!isUp && this.#downSinceMs === undefined) this.#downSinceMs = nowMs;
    if (isUp && this.#downSinceMs !== undefined) {
      const outage = { fromMs: this.#downSinceMs, toMs: nowMs };
      this.#longestMs = Math.max(this.#longestMs, outage.toMs - outage.fromMs);
      this.#outages.push(outage);
      this.#downSinceMs = undefined;
    }
    // Outages that ended more than two TTLs ago can no longer excuse anything.
    while (this.#outages.length > 0 && (this.#outages[0]?.toMs ?? 0) < nowMs - 2 * this.#ttlMs) this.#outages.shift();
  }
}
