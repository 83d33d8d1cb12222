import { decodeJwt, decodeProtectedHeader } from 'jose';
import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';

/** What a refused credential says about itself: unverified, so only ever logged, never trusted. */
export interface RefusedIdentity {
  jti: string;
  kid: string;
  sub: string;
}

/** Longest claim value logged: a refused token's claims are the caller's to choose. */
const MAX_CLAIM_CHARS = 128;

/** A claim as a short printable string, or '' (nothing of the token itself, only its claims). */
function claimText(value: unknown): string {
  if (typeof value !== 'string') return '';
  return value.replace(/[^\x20-\x7e]/g, '?').slice(0, MAX_CLAIM_CHARS);
}

/** The `jti`, `kid` and `sub` a token claims, unverified; empty strings for what it does not say or cannot be read. */
export function refusedIdentity(token: string): RefusedIdentity {
  let kid = '';
  let jti = '';
  let sub = '';
  try {
    kid = claimText(decodeProtectedHeader(token).kid);
  } catch {
    // Not a JWS: nothing to say about it but the reason.
  }
  try {
    const payload = decodeJwt(token);
    jti = claimText(payload.jti);
    sub = claimText(payload.sub);
  } catch {
    // Not a JWT payload.
  }
  return { jti, kid, sub };
}

/** Options of {@link RefusalLog}. */
export interface RefusalLogOptions {
  clock: Clock;
  logger: Logger;
  /** One line per principal in this long at most. */
  windowMs: number;
  /** Principals remembered at most; the oldest is forgotten first. */
  maxPrincipals: number;
  /** Lines per window at most, over all principals: a flood of made-up subjects is counted, not logged line by line. */
  maxLinesPerWindow: number;
}

interface Entry {
  loggedAtMs: number;
  suppressed: number;
}

/**
 * Logs each refused agent or host credential once per principal per window
 * (reason, `jti`, `kid`, `sub`; never the token), with how many refusals of
 * that principal the previous line stood for. The principal is the token's
 * unverified `sub`, which a caller can vary at will: the table is bounded, and
 * evicts its oldest entry (at worst an attacker cycling subjects gets a line
 * per subject, never unbounded memory), and the lines of one window are
 * capped over all principals (the excess is counted into the next line).
 */
export class RefusalLog {
  readonly #options: RefusalLogOptions;
  /** Insertion order is age: an entry is moved to the end whenever it logs. */
  readonly #entries = new Map<string, Entry>();
  #windowStartMs = Number.NEGATIVE_INFINITY;
  #linesInWindow = 0;
  /** Refusals not logged because the window's line budget was spent. */
  #unlogged = 0;

  constructor(options: RefusalLogOptions) {
    this.#options = options;
  }

  /** Principals remembered now (at most `maxPrincipals`). */
  get size(): number {
    return this.#entries.size;
  }

  /** Records a refusal; logs it unless this principal was logged within the window. */
  record(principal: 'agent' | 'host', reason: string, identity: RefusedIdentity): void {
    const nowMs = this.#options.clock.now();
    const key = `${principal}\u0000${identity.sub}`;
    const entry = this.#entries.get(key);
    if (entry !== undefined && nowMs - entry.loggedAtMs < this.#options.windowMs) {
      entry.suppressed++;
      return;
    }
    if (nowMs - this.#windowStartMs >= this.#options.windowMs) {
      this.#windowStartMs = nowMs;
      this.#linesInWindow = 0;
    }
    if (this.#linesInWindow >= this.#options.maxLinesPerWindow) {
      this.#unlogged++;
      return;
    }
    this.#linesInWindow++;
    const unlogged = this.#unlogged;
    this.#unlogged = 0;
    this.#entries.delete(key);
    this.#entries.set(key, { loggedAtMs: nowMs, suppressed: 0 });
    while (this.#entries.size > this.#options.maxPrincipals) {
      const oldest = this.#entries.keys().next();
      if (oldest.done === true) break;
      this.#entries.delete(oldest.value);
    }
    this.#options.logger.warn(
      { principal, reason, jti: identity.jti, kid: identity.kid, sub: identity.sub, suppressedBefore: entry?.suppressed ?? 0, unloggedBefore: unlogged },
      'credential refused',
    );
  }
}
