/**
 * When one host could not reach the control plane, and whether a 401 there
 * falls outside the promise ("no 401 while the host reaches the control plane
 * at least once in every third of a token's lifetime").
 *
 * The excuse comes from the FAULT SCHEDULE only, never from what the host was
 * seen doing: a host that stays away long after a short outage (a backoff that
 * outgrew its tokens, a hung reconnect) is exactly what the promise is about,
 * so its stream being down excuses nothing. Scheduled outages are the soak's
 * own blackholes of this host's link and the control plane being down. A 401
 * is excused only while a scheduled outage has lasted more than TTL/3, or
 * within `graceAfterMs` after such an outage ended (the host's time to get
 * back and have its tokens replaced). Outages too old to excuse anything are
 * forgotten, so this stays small however long the soak runs.
 *
 * What the host's stream did is kept apart, for the summary only.
 */
export class Reachability {
  readonly #ttlMs: number;
  readonly #graceAfterMs: number;
  /** Finished scheduled outages, oldest first. */
  readonly #outages: { fromMs: number; toMs: number }[] = [];
  #scheduledSinceMs: number | undefined;
  #isBlackholed = false;
  #isControlPlaneDown = false;
  #longestScheduledMs = 0;
  #streamDownSinceMs: number | undefined;
  #longestStreamDownMs = 0;

  /** `graceAfterMs`: how long after a scheduled outage longer than TTL/3 ends its 401s stay excused. */
  /** Scheduled outages longer than TTL/3, never pruned (see {@link wasInLongOutage}). */
  readonly #longOutages: { fromMs: number; toMs: number }[] = [];

  constructor(ttlMs: number, graceAfterMs: number, nowMs: number) {
    this.#ttlMs = ttlMs;
    this.#graceAfterMs = graceAfterMs;
    this.#streamDownSinceMs = nowMs;
  }

  /** The longest stretch the host's stream was seen down (an open one counts up to now). Reported, never an excuse. */
  longestStreamDownMs(nowMs: number): number {
    return Math.max(this.#longestStreamDownMs, this.#streamDownSinceMs === undefined ? 0 : nowMs - this.#streamDownSinceMs);
  }

  /** The longest scheduled outage so far (an open one counts up to now). */
  longestScheduledOutageMs(nowMs: number): number {
    return Math.max(this.#longestScheduledMs, this.#scheduledSinceMs === undefined ? 0 : nowMs - this.#scheduledSinceMs);
  }

  /** The host's stream was welcomed (true) or lost (false): for the summary only. */
  setStreamUp(isUp: boolean, nowMs: number): void {
    if (!isUp && this.#streamDownSinceMs === undefined) this.#streamDownSinceMs = nowMs;
    if (isUp && this.#streamDownSinceMs !== undefined) {
      this.#longestStreamDownMs = Math.max(this.#longestStreamDownMs, nowMs - this.#streamDownSinceMs);
      this.#streamDownSinceMs = undefined;
    }
  }

  /** The schedule blackholed this host's link (true) or healed it (false). */
  setBlackholed(isBlackholed: boolean, nowMs: number): void {
    this.#isBlackholed = isBlackholed;
    this.#update(nowMs);
  }

  /** The schedule took the control plane down (true) or it is listening again (false). */
  setControlPlaneDown(isDown: boolean, nowMs: number): void {
    this.#isControlPlaneDown = isDown;
    this.#update(nowMs);
  }

  /**
   * Whether a 401 at `atMs` falls outside the promise: a scheduled outage that,
   * at `atMs`, had lasted more than TTL/3, or one longer than TTL/3 that ended
   * no more than `graceAfterMs` before.
   */
  isExcused(atMs: number): boolean {
    const thirdMs = this.#ttlMs / 3;
    if (this.#scheduledSinceMs !== undefined && atMs - this.#scheduledSinceMs > thirdMs) return true;
    return this.#outages.some((o) => o.toMs - o.fromMs > thirdMs && atMs - o.fromMs > thirdMs && atMs <= o.toMs + this.#graceAfterMs);
  }

  /**
   * Whether the host was, at `atMs`, inside a scheduled outage that lasted (or,
   * still going at `nowMs`, has lasted) more than TTL/3: the only weather in
   * which it may fence itself (the lost-host grace is longer than TTL/3, and its
   * silence is counted from its last contact, which can come before the outage).
   */
  wasInLongOutage(atMs: number, nowMs: number): boolean {
    const thirdMs = this.#ttlMs / 3;
    if (this.#scheduledSinceMs !== undefined && this.#scheduledSinceMs <= atMs && nowMs - this.#scheduledSinceMs > thirdMs) return true;
    return this.#longOutages.some((o) => o.fromMs <= atMs && atMs <= o.toMs);
  }

  #update(nowMs: number): void {
    const isDown = this.#isBlackholed || this.#isControlPlaneDown;
    if (isDown && this.#scheduledSinceMs === undefined) this.#scheduledSinceMs = nowMs;
    if (!isDown && this.#scheduledSinceMs !== undefined) {
      const outage = { fromMs: this.#scheduledSinceMs, toMs: nowMs };
      this.#longestScheduledMs = Math.max(this.#longestScheduledMs, outage.toMs - outage.fromMs);
      this.#outages.push(outage);
      // Kept past the pruning below: a self-fence is judged at the end of the run (a few per run; bounded all the same).
      if (outage.toMs - outage.fromMs > this.#ttlMs / 3 && this.#longOutages.length < 10_000) this.#longOutages.push(outage);
      this.#scheduledSinceMs = undefined;
    }
    // Outages that ended longer ago than any grace (and a TTL) can no longer excuse anything.
    const keepMs = Math.max(this.#graceAfterMs, this.#ttlMs) * 2;
    while (this.#outages.length > 0 && (this.#outages[0]?.toMs ?? 0) < nowMs - keepMs) this.#outages.shift();
  }
}
