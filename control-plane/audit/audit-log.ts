import type { Clock } from '../../common/clock.js';
import { InvalidArgumentError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { AuditQuery, AuditRecord, AuditStore } from '../store/audit-store.js';

/** The bounds of the audit retention flags (`--audit-max-age`, `--audit-max-records`). */
export const AUDIT_RETENTION_BOUNDS = {
  maxAgeMs: { minMs: 60_000, maxMs: 10 * 365 * 24 * 3_600_000 },
  maxRecords: { min: 100, max: 100_000_000 },
} as const;

/** The retention of the audit log when none is given: 90 days, a million records. */
export const AUDIT_DEFAULTS = { maxAgeMs: 90 * 24 * 3_600_000, maxRecords: 1_000_000 } as const;

/** Options of {@link AuditLog}. */
export interface AuditLogOptions {
  store: AuditStore;
  clock: Clock;
  logger: Logger;
  /** Records older than this are pruned. */
  maxAgeMs: number;
  /** Records beyond the newest this many are pruned (the log may pass it by 1% between prunes). */
  maxRecords: number;
}

/**
 * The audit log of AdminService: appends records to the store and keeps it
 * within its bounds, by age on the clock (a sweep every tenth of the age, from
 * 1 min to 1 h) and by count (a prune every 1% of the bound appended).
 */
export class AuditLog {
  readonly #options: AuditLogOptions;
  readonly #logger: Logger;
  readonly #stop = new AbortController();
  readonly #pruneEvery: number;
  #appendedSincePrune = 0;
  #pruning: Promise<void> | undefined;
  #loop: Promise<void> | undefined;

  constructor(options: AuditLogOptions) {
    const { maxAgeMs, maxRecords } = options;
    const bounds = AUDIT_RETENTION_BOUNDS;
    if (!Number.isSafeInteger(maxAgeMs) || maxAgeMs < bounds.maxAgeMs.minMs || maxAgeMs > bounds.maxAgeMs.maxMs) {
      throw new InvalidArgumentError(`the audit max age must be from ${bounds.maxAgeMs.minMs} to ${bounds.maxAgeMs.maxMs} ms, got ${maxAgeMs}`);
    }
    if (!Number.isSafeInteger(maxRecords) || maxRecords < bounds.maxRecords.min || maxRecords > bounds.maxRecords.max) {
      throw new InvalidArgumentError(`the audit max records must be from ${bounds.maxRecords.min} to ${bounds.maxRecords.max}, got ${maxRecords}`);
    }
    this.#options = options;
    this.#logger = options.logger.child({ component: 'audit' });
    this.#pruneEvery = Math.max(1, Math.floor(maxRecords / 100));
  }

  /**
   * Appends a record (the time is the clock's). Never throws: a record the
   * store refuses is logged (method, token id, code) as lost, and the call it
   * describes has been answered all the same.
   */
  async record(entry: Omit<AuditRecord, 'id' | 'atMs'>): Promise<void> {
    try {
      await this.#options.store.appendAudit({ ...entry, atMs: this.#options.clock.now() });
    } catch (err) {
      this.#logger.error({ err, method: entry.method, tokenId: entry.tokenId, code: entry.code }, 'audit record lost');
      return;
    }
    // Awaited: one call in 1% pays for the prune, and a test that reads the log after an answer sees it bounded.
    if (++this.#appendedSincePrune >= this.#pruneEvery) await this.prune();
  }

  /** Records matching `query`, oldest first. */
  list(query: AuditQuery): Promise<AuditRecord[]> {
    return this.#options.store.listAudit(query);
  }

  /** Prunes now (one prune at a time; a call during one waits for it). Never throws. */
  prune(): Promise<void> {
    this.#pruning ??= this.#prune().finally(() => {
      this.#pruning = undefined;
    });
    return this.#pruning;
  }

  async #prune(): Promise<void> {
    this.#appendedSincePrune = 0;
    const { store, clock, maxAgeMs, maxRecords } = this.#options;
    try {
      const removed = await store.pruneAudit(clock.now() - maxAgeMs, maxRecords);
      if (removed > 0) this.#logger.debug({ removed }, 'audit log pruned');
    } catch (err) {
      this.#logger.error({ err }, 'audit prune failed');
    }
  }

  /** Starts the age sweep. */
  start(): void {
    this.#loop ??= this.#run();
  }

  async #run(): Promise<void> {
    const intervalMs = Math.min(3_600_000, Math.max(60_000, Math.floor(this.#options.maxAgeMs / 10)));
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      await this.#options.clock.sleep(intervalMs, signal);
      if (signal.aborted) return;
      await this.prune();
    }
  }

  /** Stops the sweep and waits for a prune in progress. Idempotent. */
  async close(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
    await this.#pruning;
  }
}
