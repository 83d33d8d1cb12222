import type * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError } from '../../common/errors.js';
import { assertPlaintextAllowed, isLoopback } from '../../common/loopback.js';

export { assertPlaintextAllowed, isLoopback, targetHost } from '../../common/loopback.js';

/**
 * Refuses, before any channel exists, to send a token in plaintext to a
 * non-loopback gRPC `target`: the channel is plaintext when no credentials are
 * given or the ones given are insecure (`createInsecure()` passed explicitly).
 */
export function assertChannelAllowed(target: string, channelCredentials: grpc.ChannelCredentials | undefined): void {
  if (channelCredentials === undefined || !channelCredentials._isSecure()) assertPlaintextAllowed(target);
}

/**
 * Parses `url` for an HTTP tool and refuses, before any connection, to send a
 * token over plain `http:` anywhere but loopback; only `http:` and `https:` are
 * accepted. Throws {@link InvalidArgumentError}; the message names the host,
 * never a token.
 */
export function assertHttpAllowed(url: string | URL): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (err) {
    throw new InvalidArgumentError('not an absolute URL', { cause: err });
  }
  if (parsed.protocol === 'https:') return parsed;
  if (parsed.protocol !== 'http:') throw new InvalidArgumentError(`refusing to send a token over ${parsed.protocol} (use https:)`);
  if (!isLoopback(parsed.hostname)) {
    throw new InvalidArgumentError(`refusing to send a token in plaintext to ${parsed.hostname}: use https: (a non-loopback host)`);
  }
  return parsed;
}
