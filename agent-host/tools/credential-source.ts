import { readFileSync, statSync } from 'node:fs';
import { UnauthenticatedError } from '../../common/errors.js';

/**
 * Where a tool reads its agent's current token, at the moment of each call.
 * Tools are given a source, never a token, so a rotation reaches every tool at
 * once and nothing needs to be registered anywhere.
 */
export interface CredentialSource {
  /** The current token; throws a typed error when there is none (revoked, expired). */
  get(): string;
}

/** The read-only view of an agent's credential holder handed to module agents and tools. */
export interface ReadOnlyCredentials extends CredentialSource {
  /** When the current token expires (Unix ms); 0 before the first one. */
  readonly expiresAtMs: number;
  /** The current token's generation. */
  readonly generation: number;
}

/** A source backed by an in-process holder (the host's `CredentialHolder` or its read-only view). */
export function fromHolder(holder: CredentialSource): CredentialSource {
  return Object.freeze({ get: (): string => holder.get() });
}

/** What {@link fromFile} observed; for tests and diagnostics. */
export interface FileSourceStats {
  /** How many times the file was read. */
  reads: number;
}

/**
 * A source backed by a token file (process agents: the host replaces it
 * atomically on each rotation). Re-reads only when `stat` shows a change (inode,
 * size or modification time), which an atomic rename always produces.
 */
export function fromFile(path: string, stats: FileSourceStats = { reads: 0 }): CredentialSource {
  let cachedKey = '';
  let cachedToken = '';
  return Object.freeze({
    get: (): string => {
      let key: string;
      try {
        const info = statSync(path, { bigint: true });
        key = `${info.ino}:${info.size}:${info.mtimeNs}`;
      } catch (err) {
        throw new UnauthenticatedError(`no token file at ${path}`, { cause: err });
      }
      if (key !== cachedKey) {
        cachedToken = readFileSync(path, 'utf8').trim();
        cachedKey = key;
        stats.reads++;
      }
      if (cachedToken === '') throw new UnauthenticatedError(`token file ${path} is empty`);
      return cachedToken;
    },
  });
}
