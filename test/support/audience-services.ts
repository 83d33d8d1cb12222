import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { createRemoteJWKSet, jwtVerify, type JWTPayload } from 'jose';
import type { Clock } from '../../common/clock.js';
import { HANG_BOUND_MS } from './wait.js';

/** The JOSE `typ` of an audience token. */
export const AUDIENCE_TOKEN_TYPE = 'tether-aud+jwt';

/** The control plane's default `iss`. */
export const DEFAULT_ISSUER = 'tether-control-plane';

/** Options of the third-party services below: what they expect and where they find the keys. */
export interface AudienceServiceOptions {
  /** The control plane's `/.well-known/jwks.json`. */
  jwksUrl: string;
  /** The audience this service is: tokens for any other are refused. */
  audience: string;
  /** Verification time (the test's fake clock). */
  clock: Clock;
  issuer?: string;
}

/** What a third-party service saw. */
export interface AudienceServiceLog {
  /** Payloads of the tokens it accepted, in order. */
  readonly accepted: JWTPayload[];
  /** How many requests it refused (missing, malformed or failing verification). */
  refused: number;
  /** How many requests reached it at all. */
  requests: number;
}

/** Makes the verifier a third-party service would run: JWKS fetched from the control plane, `iss`, `aud`, `typ` pinned. */
export function audienceVerifier(options: AudienceServiceOptions): (authorization: string | undefined) => Promise<JWTPayload> {
  const jwks = createRemoteJWKSet(new URL(options.jwksUrl), { timeoutDuration: HANG_BOUND_MS });
  return async (authorization) => {
    const match = /^Bearer ([\x21-\x7e]+)$/.exec(authorization ?? '');
    if (match?.[1] === undefined) throw new Error('no bearer token');
    const { payload } = await jwtVerify(match[1], jwks, {
      issuer: options.issuer ?? DEFAULT_ISSUER,
      audience: options.audience,
      typ: AUDIENCE_TOKEN_TYPE,
      algorithms: ['EdDSA'],
      requiredClaims: ['exp', 'sub'],
      currentDate: new Date(options.clock.now()),
    });
    return payload;
  };
}

/** A running HTTP service: `GET /whoami` answers the verified `sub`, or 401. */
export interface HttpAudienceService extends AudienceServiceLog {
  readonly url: string;
  close(): Promise<void>;
}

/** Starts a third-party HTTP service on 127.0.0.1:0 that accepts only tokens for its audience. */
export async function startHttpAudienceService(options: AudienceServiceOptions): Promise<HttpAudienceService> {
  const verify = audienceVerifier(options);
  const log: AudienceServiceLog = { accepted: [], refused: 0, requests: 0 };
  const server: HttpServer = createServer((request, response) => {
    log.requests++;
    verify(request.headers.authorization).then(
      (payload) => {
        log.accepted.push(payload);
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(JSON.stringify({ sub: payload.sub, aud: payload.aud }));
      },
      () => {
        log.refused++;
        response.writeHead(401, { 'content-type': 'text/plain' });
        response.end('unauthorized\n');
      },
    );
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
  });
  return Object.assign(log, {
    url: `http://127.0.0.1:${port}/whoami`,
    close: async (): Promise<void> => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
}

/** A running gRPC service (grpc.health.v1.Health) that accepts only tokens for its audience. */
export interface GrpcAudienceService extends AudienceServiceLog {
  readonly target: string;
  close(): Promise<void>;
}

/** Starts a third-party gRPC service on 127.0.0.1:0: Health, behind a server interceptor verifying the bearer token. */
export async function startGrpcAudienceService(
  options: AudienceServiceOptions & { credentials?: grpc.ServerCredentials },
): Promise<GrpcAudienceService> {
  const verify = audienceVerifier(options);
  const log: AudienceServiceLog = { accepted: [], refused: 0, requests: 0 };
  const authenticate: grpc.ServerInterceptor = (_method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, nextMetadata) => {
            log.requests++;
            const values = metadata.get('authorization');
            verify(typeof values[0] === 'string' && values.length === 1 ? values[0] : undefined).then(
              (payload) => {
                log.accepted.push(payload);
                nextMetadata(metadata);
              },
              () => {
                log.refused++;
                call.sendStatus({ code: grpc.status.UNAUTHENTICATED, details: 'token refused', metadata: new grpc.Metadata() });
              },
            );
          },
        }),
    });
  const server = new grpc.Server({ interceptors: [authenticate] });
  new HealthImplementation({ '': 'SERVING' }).addToServer(server);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', options.credentials ?? grpc.ServerCredentials.createInsecure(), (err, bound) =>
      err === null ? resolve(bound) : reject(err),
    );
  });
  return Object.assign(log, {
    target: `127.0.0.1:${port}`,
    close: (): Promise<void> =>
      new Promise<void>((resolve) => {
        server.tryShutdown(() => resolve());
        queueMicrotask(() => server.forceShutdown());
      }),
  });
}
