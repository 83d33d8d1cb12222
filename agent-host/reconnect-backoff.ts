/**
 * How long a host waits before its next attempt to reach the control plane.
 * Pure functions of (attempt, lowest remaining token life, a random draw), so
 * they are table-tested and the connection loop only sleeps what they say.
 *
 * Full jitter (a delay uniform on [0, cap]; see "Exponential Backoff And
 * Jitter", AWS Architecture Blog, 2015): hosts that lost the control plane
 * together spread out at every attempt, including at the cap. A clamp applied
 * after randomising (what `retry.createTimeout` does) makes every delay past
 * the sixth attempt exactly the cap, so such hosts stay aligned for good.
 *
 * The cap is also bounded by the lowest remaining life of the tokens the host
 * holds: the promise is that a control plane back within a third of the TTL is
 * reached before anything expires, and a token rotated at the latest point
 * (60 % of its life) has only 40 % − 33 % of a TTL left when such an outage
 * ends. Sleeping a tenth of what is left keeps at least 90 % of it for the
 * reconnect and the resume rotation.
 */

/** The backoff's parameters. */
export interface ReconnectBackoffPolicy {
  /** The cap of the first attempt's delay; doubles at each failed attempt. */
  initialDelayMs: number;
  /** The cap's ceiling, whatever the attempt. */
  maxDelayMs: number;
  /** The cap is at most this fraction of the lowest remaining token life. */
  lifetimeFraction: number;
  /** The lifetime bound never goes below this (a token already expired still leaves this much between attempts). */
  lifetimeFloorMs: number;
}

/** Defaults: 0.5 s doubling to 30 s, at most a tenth of the lowest remaining life, never below 250 ms. */
export const DEFAULT_RECONNECT_BACKOFF: ReconnectBackoffPolicy = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  lifetimeFraction: 0.1,
  lifetimeFloorMs: 250,
};

/** Past this many doublings every cap is `maxDelayMs` anyway; keeps `2 ** attempt` finite. */
const MAX_DOUBLINGS = 52;

/**
 * The largest delay attempt `attempt` (0 for the first retry after a loss) may
 * wait: min(initial·2^attempt, max, max(floor, fraction·lowestRemainingMs)).
 * `lowestRemainingMs` is Infinity while the host holds no token.
 */
export function reconnectCapMs(attempt: number, lowestRemainingMs: number, policy: ReconnectBackoffPolicy = DEFAULT_RECONNECT_BACKOFF): number {
  const doublings = Math.min(MAX_DOUBLINGS, Math.max(0, Math.floor(attempt)));
  const exponentialMs = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** doublings);
  // NaN (a clock gone wrong) counts as no time left: the floor, the safest bound.
  const remainingMs = Number.isNaN(lowestRemainingMs) ? 0 : lowestRemainingMs;
  const lifetimeMs = Math.max(policy.lifetimeFloorMs, remainingMs * policy.lifetimeFraction);
  return Math.min(exponentialMs, lifetimeMs);
}

/**
 * The delay before attempt `attempt`: `random()` (uniform on [0, 1)) times the
 * cap, rounded down to a whole millisecond, so uniform on [0, cap]. A draw
 * outside [0, 1) or NaN is brought into it: never a delay above the cap.
 */
export function reconnectDelayMs(
  attempt: number,
  lowestRemainingMs: number,
  random: () => number,
  policy: ReconnectBackoffPolicy = DEFAULT_RECONNECT_BACKOFF,
): number {
  const capMs = reconnectCapMs(attempt, lowestRemainingMs, policy);
  const draw = random();
  const u = Number.isNaN(draw) ? 0 : Math.min(1, Math.max(0, draw));
  return Math.floor(u * capMs);
}

/** A retry-after asked for by the control plane is never honoured past this (a host holding no token has no other bound). */
export const RETRY_AFTER_CEILING_MS = 5 * 60_000;

/**
 * The delay after the control plane deferred the host's Hello with a
 * retry-after: uniform on [retryAfter, 1.5·retryAfter] (rounded down), so
 * hosts told the same thing still spread out, then bounded like any backoff by
 * the tokens' remaining life (max(floor, fraction·lowestRemainingMs)) and by
 * {@link RETRY_AFTER_CEILING_MS}: a busy control plane never makes a host wait
 * past the point where it could still resume in time.
 */
export function retryAfterDelayMs(
  retryAfterMs: number,
  lowestRemainingMs: number,
  random: () => number,
  policy: ReconnectBackoffPolicy = DEFAULT_RECONNECT_BACKOFF,
): number {
  const askedMs = Number.isNaN(retryAfterMs) ? 0 : Math.max(0, retryAfterMs);
  const draw = random();
  const u = Number.isNaN(draw) ? 0 : Math.min(1, Math.max(0, draw));
  const remainingMs = Number.isNaN(lowestRemainingMs) ? 0 : lowestRemainingMs;
  const lifetimeMs = Math.max(policy.lifetimeFloorMs, remainingMs * policy.lifetimeFraction);
  return Math.floor(Math.min(askedMs * (1 + 0.5 * u), lifetimeMs, RETRY_AFTER_CEILING_MS));
}
