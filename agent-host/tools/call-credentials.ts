import * as grpc from '@grpc/grpc-js';
import type { CredentialSource } from './credential-source.js';

/**
 * An interceptor that attaches `authorization: Bearer <token>`, read from
 * `source` at the start of each call. Works on any channel, insecure loopback
 * included (grpc-js will not combine CallCredentials with an insecure channel).
 * If the source has no token the call goes out without one and the server
 * answers UNAUTHENTICATED; the token itself is never logged or put in an error.
 */
export function bearerInterceptor(source: CredentialSource): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        try {
          metadata.set('authorization', `Bearer ${source.get()}`);
        } catch {
          // No token to send: let the server refuse the call.
        }
        next(metadata, listener);
      },
    });
}

/** grpc-js `CallCredentials` reading `source` at each call, for TLS channels. */
export function callCredentials(source: CredentialSource): grpc.CallCredentials {
  return grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    try {
      metadata.set('authorization', `Bearer ${source.get()}`);
      callback(null, metadata);
    } catch (err) {
      callback(err instanceof Error ? new Error(`no credential: ${err.name}`) : new Error('no credential'));
    }
  });
}

/** The `authorization` header value for HTTP tools, read at the moment of the call. */
export function authorizationHeader(source: CredentialSource): { authorization: string } {
  return { authorization: `Bearer ${source.get()}` };
}
