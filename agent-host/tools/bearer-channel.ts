import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError } from '../../common/errors.js';
import { bearerInterceptor, callCredentials } from './call-credentials.js';
import type { BearerSource } from './credential-source.js';
import { assertChannelAllowed } from './loopback.js';

/** Options of {@link bearerChannel}. */
export interface BearerChannelOptions {
  /** TLS channel credentials (`grpc.credentials.createSsl(ca)`). Without them the channel is plaintext, allowed to loopback only. */
  channelCredentials?: grpc.ChannelCredentials;
  /** Further client options; any interceptors given run after the bearer one. */
  clientOptions?: grpc.ClientOptions;
}

/** The arguments of a grpc-js client constructor after the target. */
export interface BearerChannelArgs {
  credentials: grpc.ChannelCredentials;
  options: grpc.ClientOptions;
}

/**
 * What to build any grpc-js client with so that each call carries
 * `authorization: Bearer <token>` read from `source` at call time:
 * `const { credentials, options } = bearerChannel(target, source); new SomeClient(target, credentials, options)`.
 * On TLS the token rides as CallCredentials; on a plaintext channel as an
 * interceptor, and then only to loopback: a non-loopback target is refused
 * here (InvalidArgumentError), before any channel or connection exists.
 */
export function bearerChannel(target: string, source: BearerSource, options: BearerChannelOptions = {}): BearerChannelArgs {
  assertChannelAllowed(target, options.channelCredentials);
  const clientOptions = options.clientOptions ?? {};
  // A channel of the caller's would escape the target check above.
  if (clientOptions.channelOverride !== undefined || clientOptions.channelFactoryOverride !== undefined) {
    throw new InvalidArgumentError('bearerChannel makes its own channel: no channelOverride');
  }
  if (options.channelCredentials !== undefined && options.channelCredentials._isSecure()) {
    return {
      credentials: grpc.credentials.combineChannelCredentials(options.channelCredentials, callCredentials(source)),
      options: clientOptions,
    };
  }
  return {
    credentials: grpc.credentials.createInsecure(),
    options: { ...clientOptions, interceptors: [bearerInterceptor(source), ...(clientOptions.interceptors ?? [])] },
  };
}
