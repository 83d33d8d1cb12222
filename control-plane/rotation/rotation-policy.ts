/**
 * When credentials are replaced. Pure functions of time, so they can be table-
 * and property-tested. The margin they keep (at least 40 % of an agent token's
 * life left when it is replaced) is what "no agent sees a 401 while its host
 * reaches the control plane once in every third of a TTL" stands on.
 */

/** Earliest point of the jittered rotation window, as a fraction of the TTL. */
export const ROTATION_WINDOW_START = 0.5;
/** Width of the jittered rotation window, as a fraction of the TTL. */
export const ROTATION_WINDOW_WIDTH = 0.1;

/**
 * When an agent token's rotation falls due: `iat + TTL·(0.5 + 0.1·u)`, with `u`
 * uniform in [0, 1], so agents started together drift apart. `u` outside [0, 1]
 * is clamped into it; NaN counts as 0.
 */
export function rotationDueAtMs(issuedAtMs: number, expiresAtMs: number, u: number): number {
  const ttlMs = expiresAtMs - issuedAtMs;
  // A jitter that is not a number (an injected source gone wrong) counts as 0, the earliest and safest:
  // NaN would make the due time NaN, never due, and the scheduler wait NaN ms in a busy loop.
  const clamped = Number.isNaN(u) ? 0 : Math.min(1, Math.max(0, u));
  return issuedAtMs + Math.floor(ttlMs * (ROTATION_WINDOW_START + ROTATION_WINDOW_WIDTH * clamped));
}

/** Whether a credential whose rotation falls due at `dueAtMs` should be replaced at `nowMs`. */
export function isRotationDue(nowMs: number, dueAtMs: number): boolean {
  return nowMs >= dueAtMs;
}

/** Whether a token is past half its life: a message delivered now is preceded by a fresh token. */
export function isPastHalfLife(nowMs: number, issuedAtMs: number, expiresAtMs: number): boolean {
  return nowMs >= issuedAtMs + (expiresAtMs - issuedAtMs) / 2;
}

/** When a host credential's rotation falls due: once a third of its life has passed. */
export function hostRotationDueAtMs(issuedAtMs: number, expiresAtMs: number): number {
  return issuedAtMs + Math.floor((expiresAtMs - issuedAtMs) / 3);
}

/**
 * The fewest rotations per second that keep `agents` tokens of `ttlMs` fresh
 * with room for a storm: 2 × agents / (0.55 × TTL). Each agent rotates about
 * once per 0.55 TTL (the middle of the jittered window); twice that rate lets
 * a backlog (every token due at once after an outage or a key revocation) be
 * worked off within the 40 % of life a token has left when it falls due.
 */
export function neededRotationsPerSecond(agents: number, ttlMs: number): number {
  if (agents <= 0 || !(ttlMs > 0)) return 0;
  return Math.ceil((2 * agents) / ((0.55 * ttlMs) / 1000));
}

/** The least signing-rate cap `auto` sizes to, however few agents there are (the old fixed default). */
export const MIN_AUTO_ROTATIONS_PER_SECOND = 200;
