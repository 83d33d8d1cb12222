import * as grpc from '@grpc/grpc-js';
import { SystemClock, type Clock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import { WatchedCertificates } from '../../common/watched-certificates.js';

/** Options of {@link caFileCredentials}. */
export interface CaFileCredentialsOptions {
  /** Polls wait on it. Default: the real clock. */
  clock?: Clock;
  /** How often the file is read again. Default 10 s. */
  pollIntervalMs?: number;
  /** Where a reload, or a replaced file that cannot be used, is reported. */
  logger?: Logger;
}

/** TLS channel credentials that follow a CA file, and what stops watching it. */
export interface CaFileCredentials {
  /** For `AgentClient`'s or `bearerChannel`'s `channelCredentials`. */
  readonly credentials: grpc.ChannelCredentials;
  /** Stops watching the file. Idempotent. */
  close(): Promise<void>;
}

/**
 * TLS channel credentials verifying the server against the CA in `caFile`
 * (as `TETHER_CA_FILE` names for a process agent), read again every
 * `pollIntervalMs`: when the control plane's certificate is rotated to one
 * signed by a new CA and the file is replaced, the next connections verify
 * with the new CA, without a restart. A replaced file that is no PEM CA
 * certificate is not taken (the current CA stays; the logger says why). A bad
 * file at the start throws InvalidArgumentError. The caller owns the result:
 * `close()` it.
 */
export function caFileCredentials(caFile: string, options: CaFileCredentialsOptions = {}): CaFileCredentials {
  const watched = WatchedCertificates.open({
    caFile,
    clock: options.clock ?? new SystemClock(),
    ...(options.logger === undefined ? {} : { logger: options.logger }),
    ...(options.pollIntervalMs === undefined ? {} : { pollIntervalMs: options.pollIntervalMs }),
  });
  return { credentials: grpc.experimental.createCertificateProviderChannelCredentials(watched, null), close: () => watched.close() };
}
