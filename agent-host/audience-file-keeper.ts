import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { audienceFileVariable, validateAudienceFiles, type AudienceFileSpec } from '../common/audience-files.js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import { TokenFile } from './token-file.js';
import type { AgentClient } from './tools/agent-client.js';

/** The longest wait between two attempts at a refresh that failed (the control plane unreachable). */
const MAX_RETRY_MS = 30_000;

/** Options of {@link AudienceFileKeeper.start}. */
export interface AudienceFileKeeperOptions {
  /** `<agent dir>/tokens`, made 0700. */
  dir: string;
  files: readonly AudienceFileSpec[];
  /** AgentService as the agent (MintToken). */
  client: AgentClient;
  clock: Clock;
  logger: Logger;
  /** The agent token's TTL (its first credential's `exp - iat`): what lifetimes and refresh points are computed from. */
  agentTokenTtlMs: number;
}

/** One file kept: what it is for, where, its token's times, and what wakes its refresher early. */
interface KeptFile {
  spec: AudienceFileSpec;
  file: TokenFile;
  minted: Minted;
  wake: AbortController;
}

/** A minted token's times. */
interface Minted {
  issuedAtMs: number;
  expiresAtMs: number;
}

/**
 * When a file token minted at `issuedAtMs`, expiring at `expiresAtMs`, is
 * replaced: when a third of the agent token TTL (the longest outage the
 * promise covers) plus a twentieth of it is all it has left, so a refresh that
 * finds the control plane unreachable has that long to get through before the
 * file's token expires; never before an eighth of its life (a token cut short
 * by its agent token's `exp` would otherwise be minted again at once, with the
 * same `exp`: it is refreshed with the next agent token, see {@link AudienceFileKeeper.onCredential}).
 */
export function refreshAtMs(issuedAtMs: number, expiresAtMs: number, agentTokenTtlMs: number): number {
  const lifeMs = expiresAtMs - issuedAtMs;
  const keepMs = Math.ceil(agentTokenTtlMs / 3) + Math.ceil(agentTokenTtlMs / 20);
  return issuedAtMs + Math.max(Math.ceil(lifeMs / 8), lifeMs - keepMs);
}

/**
 * Keeps a process agent's audience-token files: `<dir>/<name>` for each, 0600,
 * replaced by rename (never half-written), each holding a token minted as the
 * agent for its audience, with half the agent token TTL to live (capped by the
 * agent token's own `exp`), replaced at {@link refreshAtMs}. A refresh that
 * fails is retried (bounded waits) until it gets through. `close()` stops and
 * removes the files.
 */
export class AudienceFileKeeper {
  readonly #options: AudienceFileKeeperOptions;
  readonly #files: KeptFile[] = [];
  readonly #closing = new AbortController();
  #loops: Promise<void>[] = [];

  private constructor(options: AudienceFileKeeperOptions) {
    this.#options = options;
  }

  /** The lifetime asked for each file token: half the agent token TTL. */
  get ttlMs(): number {
    return Math.max(1_000, Math.floor(this.#options.agentTokenTtlMs / 2));
  }

  /** Writes every file (rejects if a token cannot be minted), then keeps them fresh. */
  static async start(options: AudienceFileKeeperOptions): Promise<AudienceFileKeeper> {
    validateAudienceFiles(options.files);
    const keeper = new AudienceFileKeeper(options);
    await mkdir(options.dir, { recursive: true, mode: 0o700 });
    try {
      for (const spec of options.files) {
        const file = new TokenFile(join(options.dir, spec.name));
        const minted = await keeper.#mint(spec, file);
        keeper.#files.push({ spec, file, minted, wake: new AbortController() });
      }
    } catch (err) {
      await keeper.close();
      throw err;
    }
    keeper.#loops = keeper.#files.map((entry) => keeper.#keep(entry));
    return keeper;
  }

  /** The variables naming each file's path, for the agent's environment. */
  variables(): Record<string, string> {
    return Object.fromEntries(this.#files.map(({ spec, file }) => [audienceFileVariable(spec.name), file.path]));
  }

  /**
   * A new agent token was applied: a file whose token would not outlive an
   * outage the promise covers (it was cut short by the previous agent token's
   * `exp`) is refreshed now, with a full lifetime.
   */
  onCredential(): void {
    const nowMs = this.#options.clock.now();
    for (const entry of this.#files) {
      if (refreshAtMs(entry.minted.issuedAtMs, entry.minted.expiresAtMs, this.#options.agentTokenTtlMs) > nowMs && entry.minted.expiresAtMs - nowMs < this.#keepMs()) {
        entry.wake.abort();
      }
    }
  }

  #keepMs(): number {
    return Math.ceil(this.#options.agentTokenTtlMs / 3) + Math.ceil(this.#options.agentTokenTtlMs / 20);
  }

  async #mint(spec: AudienceFileSpec, file: TokenFile): Promise<Minted> {
    const minted = await this.#options.client.mintToken(spec.audience, { ttlMs: this.ttlMs });
    await file.write(minted.token);
    this.#options.logger.debug({ file: spec.name, aud: spec.audience, jti: minted.tokenId, exp: minted.expiresAtMs }, 'audience file written');
    return { issuedAtMs: minted.issuedAtMs, expiresAtMs: minted.expiresAtMs };
  }

  async #keep(entry: KeptFile): Promise<void> {
    const { clock, logger, agentTokenTtlMs } = this.#options;
    const closing = this.#closing.signal;
    let failures = 0;
    while (!closing.aborted) {
      const nowMs = clock.now();
      const dueMs = failures === 0 ? refreshAtMs(entry.minted.issuedAtMs, entry.minted.expiresAtMs, agentTokenTtlMs) : nowMs + this.#retryMs(entry.minted, nowMs);
      if (dueMs > nowMs) {
        const woken = AbortSignal.any([closing, entry.wake.signal]);
        await clock.sleep(dueMs - nowMs, woken);
        if (closing.aborted) return;
        if (entry.wake.signal.aborted) entry.wake = new AbortController();
      }
      try {
        entry.minted = await this.#mint(entry.spec, entry.file);
        failures = 0;
      } catch (err) {
        if (closing.aborted) return;
        failures++;
        logger.warn({ err, file: entry.spec.name, failures, expiresAtMs: entry.minted.expiresAtMs }, 'audience file refresh failed; retrying');
      }
    }
  }

  /** After a failed refresh: an eighth of what the token has left, from 1 s to {@link MAX_RETRY_MS}. */
  #retryMs(minted: Minted, nowMs: number): number {
    return Math.min(MAX_RETRY_MS, Math.max(1_000, Math.floor((minted.expiresAtMs - nowMs) / 8)));
  }

  /** Stops refreshing and removes the files (and their directory). Idempotent. */
  async close(): Promise<void> {
    this.#closing.abort();
    await Promise.allSettled(this.#loops);
    for (const { file } of this.#files) await file.close();
    await rm(this.#options.dir, { recursive: true, force: true });
  }
}
