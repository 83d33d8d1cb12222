/**
 * bearerInterceptor on a real loopback gRPC server: the token is read at the
 * start of each call, awaited when the source is asynchronous, and a call
 * whose source fails (or that is cancelled while its token is awaited) ends
 * locally and never reaches the server.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { bearerInterceptor } from '../../../agent-host/tools/call-credentials.js';
import type { BearerSource } from '../../../agent-host/tools/credential-source.js';
import { TokenRevokedError } from '../../../common/errors.js';
import { waitUntil } from '../../support/wait.js';

const ECHO_PATH = '/test.v1.Echo/Echo';
const identity = (bytes: Buffer): Buffer => bytes;

/** A promise and its resolvers. */
function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (err: unknown) => void } {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe('bearerInterceptor', () => {
  let server: grpc.Server;
  let target: string;
  let clients: grpc.Client[];
  /** The authorization header of each request that reached the server. */
  let seen: string[];

  beforeEach(async () => {
    seen = [];
    clients = [];
    server = new grpc.Server();
    server.addService(
      {
        echo: {
          path: ECHO_PATH,
          requestStream: false,
          responseStream: false,
          requestSerialize: identity,
          requestDeserialize: identity,
          responseSerialize: identity,
          responseDeserialize: identity,
        },
      },
      {
        echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
          seen.push(String(call.metadata.get('authorization')[0] ?? ''));
          callback(null, call.request);
        },
      },
    );
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, bound) => (err === null ? resolve(bound) : reject(err)));
    });
    target = `127.0.0.1:${port}`;
  });

  afterEach(async () => {
    for (const client of clients) client.close();
    await new Promise<void>((resolve) => {
      server.tryShutdown(() => resolve());
      queueMicrotask(() => server.forceShutdown());
    });
  });

  /** Starts an Echo call through a client with the interceptor on `source` (then `after`, if given). */
  function echo(source: BearerSource, payload = 'hello', after: grpc.Interceptor[] = []): { call: grpc.ClientUnaryCall; done: Promise<Buffer> } {
    const client = new grpc.Client(target, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor(source), ...after] });
    clients.push(client);
    let call!: grpc.ClientUnaryCall;
    const done = new Promise<Buffer>((resolve, reject) => {
      call = client.makeUnaryRequest(ECHO_PATH, identity, identity, Buffer.from(payload), (err, value) =>
        err === null && value !== undefined ? resolve(value) : reject(err ?? new Error('no response')),
      );
    });
    return { call, done };
  }

  it('reads a synchronous source at the start of each call', async () => {
    let token = 'one';
    const source = { get: (): string => token };
    expect(String(await echo(source).done)).toBe('hello');
    token = 'two';
    expect(String(await echo(source, 'again').done)).toBe('again');
    expect(seen).toEqual(['Bearer one', 'Bearer two']);
  });

  it('waits for an asynchronous source, holding the request until the token is in', async () => {
    const token = deferred<string>();
    let gets = 0;
    const { done } = echo({
      get: () => {
        gets++;
        return token.promise;
      },
    });
    await waitUntil(() => gets === 1, 'the source to be read');
    expect(seen).toEqual([]);
    token.resolve('minted');
    expect(String(await done)).toBe('hello');
    expect(seen).toEqual(['Bearer minted']);
  });

  it('ends the call UNAUTHENTICATED, unsent, when the source throws or rejects', async () => {
    const thrown = echo({
      get: () => {
        throw new TokenRevokedError('credential revoked');
      },
    });
    await expect(thrown.done).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED, details: 'no credential to send: TokenRevokedError: credential revoked' });
    const rejected = echo({ get: () => Promise.reject(new Error('secret-looking detail')) });
    const failure = await rejected.done.then(
      () => undefined,
      (err: unknown) => err as grpc.ServiceError,
    );
    expect(failure?.code).toBe(grpc.status.UNAUTHENTICATED);
    // Only a TetherError's message is passed on; anything else is named, not quoted.
    expect(failure?.details).toBe('no credential to send: Error');
    expect(seen).toEqual([]);
  });

  it('ends the call UNAUTHENTICATED, unsent, when the token holds a stray character, and never quotes it', async () => {
    const canary = 'Q2FuYXJ5VG9rZW5WYWx1ZQ';
    for (const source of [{ get: (): string => `${canary}\r` }, { get: (): Promise<string> => Promise.resolve(`${canary}\n#`) }]) {
      const failure = await echo(source).done.then(
        () => undefined,
        (err: unknown) => err as grpc.ServiceError,
      );
      expect(failure?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(failure?.details).toMatch(/^no credential to send: UnauthenticatedError: the token (contains a carriage return|holds more than one line)/);
      expect(`${failure?.message} ${failure?.details} ${failure?.stack}`).not.toContain(canary);
    }
    expect(seen).toEqual([]);
  });

  it('ends a call cancelled while its token is awaited as CANCELLED, and never sends it', async () => {
    const token = deferred<string>();
    let gets = 0;
    // Runs after the bearer interceptor: it is reached only when a call is really made.
    let made = 0;
    const observe: grpc.Interceptor = (options, nextCall) => {
      made++;
      return new grpc.InterceptingCall(nextCall(options));
    };
    const { call, done } = echo(
      {
        get: () => {
          gets++;
          return token.promise;
        },
      },
      'hello',
      [observe],
    );
    await waitUntil(() => gets === 1, 'the source to be read');
    call.cancel();
    await expect(done).rejects.toMatchObject({ code: grpc.status.CANCELLED });
    token.resolve('too-late');
    await token.promise;
    // One macrotask turn: every continuation of the resolved token has run.
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(made).toBe(0);
    expect(seen).toEqual([]);
  });
});
