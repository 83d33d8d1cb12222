import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import { LIVE_AGENT_STATES, type Store } from '../store/store.js';
import type { SigningKeyRing } from './signing-keys.js';
import type { TokenVerifier } from './token-verifier.js';

/**
 * Added to the re-sign window for the last credential re-signed to reach its
 * host over the stream and be applied (one round trip and a queue, on a host
 * that is connected).
 */
export const RESIGN_DELIVERY_ALLOWANCE_MS = 5_000;

/** Agents and hosts read per page while looking for credentials a revoked key signed. */
const PAGE = 500;

/** Options of {@link KeyRevoker}. */
export interface KeyRevokerOptions {
  keys: SigningKeyRing;
  /**
   * The federation keys (audience tokens under an issuer URL). Revoking one of
   * them refuses and unpublishes what it signed; nothing is re-signed here: an
   * audience token is minted again by its agent (or its host, for token files) when due.
   */
  federationKeys?: SigningKeyRing;
  verifier: TokenVerifier;
  store: Store;
  clock: Clock;
  logger: Logger;
  /** The rotation scheduler's cap in force (read when a revocation is planned): what the re-sign window is computed from. */
  maxRotationsPerSecond: number | (() => number);
  /** Whether the host has a live stream (a credential can be pushed to it). */
  isHostConnected: (hostId: string) => boolean;
  /** Re-signs a connected host's own credential and pushes it; false if it could not (gone meanwhile). */
  resignHost: (hostId: string) => Promise<boolean>;
  /** Queues an agent's rotation on the rate-capped scheduler (soonest-expiring first among those due). */
  scheduleRotation: (agentId: string, dueAtMs: number, expiresAtMs: number) => void;
}

/** What `keys revoke` did, and by when every connected credential the key signed is replaced. */
export interface KeyRevocationReport {
  kid: string;
  /** The key that signs now. */
  signerKid: string;
  /** Connected hosts whose own credential was re-signed (already, when this returns). */
  hostsResigned: number;
  /** Disconnected hosts whose credential the key signed: refused for good when they connect; enroll them again. */
  hostsToReenroll: string[];
  /** Agents on connected hosts queued for a new credential, soonest-expiring first. */
  agentsScheduled: number;
  /** Agents on disconnected hosts: re-signed when their host connects (their rotation is due). */
  agentsAtReconnect: number;
  /** From the revocation, how long until every scheduled agent holds a credential from another key. */
  windowMs: number;
}

/**
 * How long the rotation scheduler needs, at `maxPerSecond`, to re-sign
 * `scheduled` agents due now while the rotations of other agents falling due
 * meanwhile (`otherDueAtMs`) compete with them for the same cap, plus the
 * delivery allowance. Pure, for table tests: the smallest W (whole seconds) with
 * `scheduled + |{other due before now + W}| <= W · maxPerSecond`.
 */
export function resignWindowMs(scheduled: number, otherDueAtMs: readonly number[], nowMs: number, maxPerSecond: number): number {
  if (scheduled === 0) return 0;
  const sorted = [...otherDueAtMs].sort((a, b) => a - b);
  let windowS = Math.ceil(scheduled / maxPerSecond);
  // Bounded: each pass adds at least one second, and all the others fit in at most `sorted.length / maxPerSecond` more.
  for (let pass = 0; pass <= sorted.length + 1; pass++) {
    const competing = countBefore(sorted, nowMs + windowS * 1000);
    const neededS = Math.ceil((scheduled + competing) / maxPerSecond);
    if (neededS <= windowS) break;
    windowS = neededS;
  }
  return windowS * 1000 + RESIGN_DELIVERY_ALLOWANCE_MS;
}

/** How many of `sorted` (ascending) are below `limit`. */
function countBefore(sorted: readonly number[], limit: number): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if ((sorted[mid] as number) < limit) low = mid + 1;
    else high = mid;
  }
  return low;
}

/**
 * Revokes a compromised signing key: the key ring refuses its tokens and drops it
 * from the JWKS, the verifier forgets what it cached from it, connected hosts get
 * a new host credential at once, and every live agent whose credential it may
 * have signed is made due for rotation, queued on the rate-capped scheduler if its
 * host is connected, re-signed at its host's next Hello otherwise.
 *
 * Agent records do not name the key that signed their credential; the key's
 * signing period does: a credential issued (whole seconds, as `iat`) from the
 * second the key started signing to when it stopped may carry it. That may
 * re-sign a few credentials the next key signed, never miss one.
 */
export class KeyRevoker {
  readonly #options: KeyRevokerOptions;
  readonly #logger: Logger;

  constructor(options: KeyRevokerOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'key-revocation' });
  }

  #maxRotationsPerSecond(): number {
    const cap = this.#options.maxRotationsPerSecond;
    return typeof cap === 'number' ? cap : cap();
  }

  /** Revokes `kid` and starts replacing what it signed; see the class comment. */
  async revoke(kid: string): Promise<KeyRevocationReport> {
    const { verifier, clock, federationKeys } = this.#options;
    const keys = federationKeys?.has(kid) === true ? federationKeys : this.#options.keys;
    const revocation = await keys.revoke(kid);
    verifier.forgetKey(kid);
    const report: KeyRevocationReport = {
      kid,
      signerKid: revocation.signerKid,
      hostsResigned: 0,
      hostsToReenroll: [],
      agentsScheduled: 0,
      agentsAtReconnect: 0,
      windowMs: 0,
    };
    const period = revocation.signedPeriod;
    if (keys === federationKeys) {
      this.#logger.warn({ kid, purpose: keys.purpose }, 'federation key revoked; the audience tokens it signed are refused and minted again by their agents');
      return report;
    }
    if (period === undefined) {
      this.#logger.warn({ kid }, 'revoked signing key never signed; nothing to re-sign');
      return report;
    }
    const nowMs = clock.now();
    // `iat` is whole seconds: a credential signed at t carries floor(t / 1000) s.
    const fromMs = Math.floor(period.fromMs / 1000) * 1000;
    const isSignedInPeriod = (issuedAtMs: number): boolean => issuedAtMs >= fromMs && issuedAtMs <= period.untilMs;
    await this.#resignHosts(isSignedInPeriod, nowMs, report);
    const otherDueAtMs = await this.#scheduleAgents(fromMs, period.untilMs, isSignedInPeriod, nowMs, report);
    // Counted from the revocation: the sweep itself takes time at scale (about 2 s at 10,000 agents), then the drain.
    const scheduledAtMs = clock.now();
    report.windowMs =
      report.agentsScheduled === 0
        ? 0
        : scheduledAtMs - nowMs + resignWindowMs(report.agentsScheduled, otherDueAtMs, scheduledAtMs, this.#maxRotationsPerSecond());
    this.#logger.warn(
      {
        kid,
        signerKid: report.signerKid,
        hostsResigned: report.hostsResigned,
        hostsToReenroll: report.hostsToReenroll.length,
        agentsScheduled: report.agentsScheduled,
        agentsAtReconnect: report.agentsAtReconnect,
        windowMs: report.windowMs,
      },
      'signing key revoked; re-signing what it signed',
    );
    return report;
  }

  /** Connected hosts first, soonest-expiring first, at once (there are few); disconnected ones are listed. */
  async #resignHosts(isSignedInPeriod: (issuedAtMs: number) => boolean, nowMs: number, report: KeyRevocationReport): Promise<void> {
    const { store, isHostConnected, resignHost } = this.#options;
    const connected: { hostId: string; expiresAtMs: number }[] = [];
    for (let afterId: string | null = null; ; ) {
      const page = await store.listHosts(afterId, PAGE);
      for (const host of page.items) {
        if (host.state === 'revoked' || host.credentialGeneration === 0) continue;
        if (host.credentialExpiresAtMs <= nowMs || !isSignedInPeriod(host.credentialIssuedAtMs)) continue;
        if (isHostConnected(host.hostId)) connected.push({ hostId: host.hostId, expiresAtMs: host.credentialExpiresAtMs });
        else report.hostsToReenroll.push(host.hostId);
      }
      afterId = page.nextAfterId;
      if (afterId === null) break;
    }
    connected.sort((a, b) => a.expiresAtMs - b.expiresAtMs);
    for (const { hostId } of connected) {
      try {
        if (await resignHost(hostId)) report.hostsResigned++;
        else report.hostsToReenroll.push(hostId);
      } catch (err) {
        // Its stream may have ended meanwhile: then it is refused at its next connect, like any disconnected one.
        this.#logger.error({ err, hostId }, 'could not re-sign a host credential after a key revocation');
        report.hostsToReenroll.push(hostId);
      }
    }
  }

  /**
   * Makes every live agent's credential the key may have signed due now (durably,
   * so a restart or a reconnect still replaces it) and queues those on connected
   * hosts. Returns the due times of the other agents on connected hosts, which
   * compete for the same rate cap.
   */
  async #scheduleAgents(
    fromMs: number,
    untilMs: number,
    isSignedInPeriod: (issuedAtMs: number) => boolean,
    nowMs: number,
    report: KeyRevocationReport,
  ): Promise<number[]> {
    const { store, isHostConnected, scheduleRotation } = this.#options;
    await store.markAgentRotationsDue(fromMs, untilMs, nowMs);
    const otherDueAtMs: number[] = [];
    for (let afterId: string | null = null; ; ) {
      const page = await store.listAgents({ states: LIVE_AGENT_STATES }, afterId, PAGE);
      for (const agent of page.items) {
        const isConnected = agent.hostId !== null && isHostConnected(agent.hostId);
        if (!isSignedInPeriod(agent.issuedAtMs) || agent.expiresAtMs <= nowMs) {
          if (isConnected) otherDueAtMs.push(agent.rotationDueAtMs);
        } else if (isConnected) {
          scheduleRotation(agent.agentId, nowMs, agent.expiresAtMs);
          report.agentsScheduled++;
        } else {
          report.agentsAtReconnect++;
        }
      }
      afterId = page.nextAfterId;
      if (afterId === null) break;
    }
    return otherDueAtMs;
  }
}
