/**
 * How often a host looks at what it holds and how long it lets a call to the
 * control plane run, both tied to the agent token TTL it was told in Welcome.
 * A fixed 30 s (what the host used whatever the TTL) lets a 30 s token expire
 * between two expiry checks and a heartbeat hang for a whole TTL behind a
 * dead link: the warning then comes after the expiry it was meant to announce.
 */

/** The host's cadences. */
export interface HostCadence {
  /** How often the lowest time-to-expiry is checked: TTL/10, at most 30 s. */
  expiryCheckIntervalMs: number;
  /** The deadline of each host → control-plane call (heartbeats, tools): min(heartbeat interval, TTL/10, 30 s). */
  callDeadlineMs: number;
}

/** The expiry check never runs less often than this, however long the TTL. */
const MAX_EXPIRY_CHECK_INTERVAL_MS = 30_000;
/** Neither bound goes below this (a TTL of 0 or less, or one not known yet, must not make a busy loop). */
const MIN_INTERVAL_MS = 100;

/**
 * The cadences for an agent token TTL of `agentTokenTtlMs` and a heartbeat
 * every `heartbeatIntervalMs`. Values that are not positive numbers are
 * ignored in favour of the other bound, and both results are at least 100 ms.
 */
export function hostCadence(agentTokenTtlMs: number, heartbeatIntervalMs: number): HostCadence {
  const tenthMs = agentTokenTtlMs > 0 ? agentTokenTtlMs / 10 : Infinity;
  const intervalMs = heartbeatIntervalMs > 0 ? heartbeatIntervalMs : Infinity;
  const expiryCheckIntervalMs = Math.min(tenthMs, MAX_EXPIRY_CHECK_INTERVAL_MS);
  const callDeadlineMs = Math.min(tenthMs, intervalMs, MAX_EXPIRY_CHECK_INTERVAL_MS);
  return {
    expiryCheckIntervalMs: Math.max(MIN_INTERVAL_MS, Math.floor(expiryCheckIntervalMs)),
    callDeadlineMs: Math.max(MIN_INTERVAL_MS, Math.floor(callDeadlineMs)),
  };
}
