import { readFileSync, statSync } from 'node:fs';
import { UnauthenticatedError } from '../../common/errors.js';
import { tokenProblem } from '../../common/secrets.js';

/**
 * Where a tool reads its agent's current token, at the moment of each call.
 * Tools are given a source, never a token, so a rotation reaches every tool at
 * once and nothing needs to be registered anywhere.
 */
export interface CredentialSource {
  /** The current token; throws a typed error when there is none (revoked, expired). */
  get(): string;
}

/**
 * A source whose token may first have to be fetched: an audience token from
 * `AudienceTokens.source()`, minted on demand and cached. Read at the start
 * of each call, like a {@link CredentialSource}.
 */
export interface AsyncCredentialSource {
  /** The token to send now; rejects with a typed error when there is none. */
  get(): Promise<string>;
}

/**
 * `token` if it can go in an `authorization: Bearer` header (one line of token
 * characters); otherwise {@link UnauthenticatedError} saying what is wrong,
 * never the value. Checked before a header is set: grpc-js and fetch refuse a
 * bad header value with a message that quotes it.
 */
export function wellFormedToken(token: string, what = 'the token'): string {
  const problem = tokenProblem(token);
  if (problem !== undefined) throw new UnauthenticatedError(`${what} ${problem}`);
  return token;
}

/** Anything the call helpers read a bearer token from, at the moment of each call. */
export type BearerSource = CredentialSource | AsyncCredentialSource;

/** The read-only view of an agent's credential holder handed to module agents and tools. */
export interface ReadOnlyCredentials extends CredentialSource {
  /** When the current token expires (Unix ms); 0 before the first one. */
  readonly expiresAtMs: number;
  /** The current token's generation. */
  readonly generation: number;
}

/**
 * A source backed by an in-process holder (the host's `CredentialHolder` or its
 * read-only view). Frozen, and holds the holder only in a closure: nothing
 * reachable from it can apply or revoke a credential.
 */
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
 * atomically on each rotation). Re-reads only when `stat` shows a change (device,
 * inode, size, modification or change time), which the write-beside-then-rename
 * always produces: the renamed file's inode differs from the one it replaces,
 * even when sizes and times match. Counts its reads in `stats` when given.
 * Frozen; it can only read.
 */
export function fromFile(path: string, stats: FileSourceStats = { reads: 0 }): CredentialSource {
  let cachedKey = '';
  let cachedToken = '';
  return Object.freeze({
    get: (): string => {
      let key: string;
      try {
        const info = statSync(path, { bigint: true });
        key = `${info.dev}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`;
      } catch (err) {
        throw new UnauthenticatedError(`no token file at ${path}`, { cause: err });
      }
      if (key !== cachedKey) {
        let token: string;
        try {
          token = readFileSync(path, 'utf8').trim();
        } catch (err) {
          // Replaced or removed between stat and read: nothing cached changes, the next call stats again.
          throw new UnauthenticatedError(`cannot read token file ${path}`, { cause: err });
        }
        stats.reads++;
        // Keyed by the stat taken before the read: if the file was replaced in between, the next stat differs and re-reads.
        cachedToken = token;
        cachedKey = key;
      }
      return wellFormedToken(cachedToken, `token file ${path}`);
    },
  });
}
