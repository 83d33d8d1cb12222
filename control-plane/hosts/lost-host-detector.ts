import type { Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { ControlPlaneEvents } from '../events.js';
import type { Store } from '../store/store.js';
import type { HostSessions } from './host-session.js';

const PAGE = 500;

/** Options of {@link LostHostDetector}. */
export interface LostHostDetectorOptions {
  store: Store;
  sessions: HostSessions;
  clock: Clock;
  logger: Logger;
  events: ControlPlaneEvents;
  /** Time without contact after which a host is lost. */
  graceMs: number;
  /** How often hosts are looked at. */
  sweepIntervalMs: number;
  /** Hosts declared lost per sweep at most; the rest wait for the next sweep. */
  maxLostPerSweep: number;
  /** What losing a host does (its agents become `lost`, and are moved). */
  onLost: (hostId: string, silentForMs: number) => Promise<void>;
}

/**
 * Declares hosts lost: a host not connected for the grace, counted on this
 * control plane's clock from its last contact or from this control plane's
 * own start, whichever is later, so a control plane that comes back after a
 * long downtime gives every host the whole grace to reconnect. Hosts are
 * declared at a bounded rate (`maxLostPerSweep` per sweep), and each once
 * until it connects again.
 */
export class LostHostDetector {
  readonly #options: LostHostDetectorOptions;
  readonly #logger: Logger;
  readonly #startedAtMs: number;
  /** When each disconnected host last sent us a message, on this control plane. */
  readonly #lastContactMs = new Map<string, number>();
  /** Hosts declared lost and not connected since. */
  readonly #declared = new Set<string>();
  readonly #stop = new AbortController();
  #loop: Promise<void> | undefined;

  constructor(options: LostHostDetectorOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'lost-hosts' });
    this.#startedAtMs = options.clock.now();
    options.events.on('host-connected', ({ hostId }) => {
      this.#declared.delete(hostId);
      this.#lastContactMs.delete(hostId);
    });
    // The grace counts from the host's last message, not from when the transport noticed the silence
    // (a silent link takes keepalive time + timeout to be seen): the promise is about contact.
    options.events.on('host-disconnected', ({ hostId, lastContactMs }) => {
      if (options.sessions.get(hostId) === undefined) this.#lastContactMs.set(hostId, lastContactMs);
    });
  }

  start(): void {
    this.#loop ??= this.#run();
  }

  async close(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
  }

  async #run(): Promise<void> {
    const { clock, sweepIntervalMs } = this.#options;
    while (!this.#stop.signal.aborted) {
      await clock.sleep(sweepIntervalMs, this.#stop.signal);
      if (this.#stop.signal.aborted) return;
      try {
        await this.sweep();
      } catch (err) {
        this.#logger.error({ err }, 'lost-host sweep failed; trying again at the next one');
      }
    }
  }

  /** Looks at every host once; declares lost those past the grace (at most `maxLostPerSweep`). Returns how many. */
  async sweep(): Promise<number> {
    const { store, sessions, clock, graceMs, maxLostPerSweep } = this.#options;
    let declared = 0;
    for (let afterId: string | null = null; ; ) {
      const page = await store.listHosts(afterId, PAGE);
      for (const host of page.items) {
        if (this.#stop.signal.aborted || declared >= maxLostPerSweep) return declared;
        if (host.state === 'revoked' || this.#declared.has(host.hostId) || sessions.get(host.hostId) !== undefined) continue;
        const nowMs = clock.now();
        const lastContactMs = Math.max(host.lastSeenMs, this.#lastContactMs.get(host.hostId) ?? 0, this.#startedAtMs);
        const silentForMs = nowMs - lastContactMs;
        if (silentForMs < graceMs) continue;
        this.#declared.add(host.hostId);
        declared++;
        this.#logger.warn({ hostId: host.hostId, silentForMs, graceMs }, 'host lost: no contact for the lost-host grace');
        this.#options.events.emit('host-lost', { hostId: host.hostId, silentForMs });
        await this.#options.onLost(host.hostId, silentForMs);
      }
      afterId = page.nextAfterId;
      if (afterId === null) return declared;
    }
  }
}
