import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import { TetherError } from '../../common/errors.js';
import { wellFormedToken, type BearerSource, type CredentialSource } from './credential-source.js';

/** What an interceptor's `nextCall` returns (grpc-js does not export the interface by name). */
type CallInterface = ReturnType<grpc.NextCall>;
type MessageContext = Parameters<CallInterface['sendMessageWithContext']>[0];

/**
 * Why a source gave no token, for a status detail: a {@link TetherError}'s
 * message (which never holds a token) or just the error's name.
 */
export function describeFailure(err: unknown): string {
  if (err instanceof TetherError) return `${err.name}: ${err.message}`;
  return err instanceof Error ? err.name : 'unknown error';
}

/**
 * A call whose underlying grpc-js call is made only once the token is in hand.
 * With a synchronous source that is at once; with an asynchronous one (an
 * audience token being minted), messages, half-close and reads wait meanwhile.
 * If the source fails, the call ends UNAUTHENTICATED without ever being sent,
 * so no request goes out without its credential. The deadline is enforced by
 * grpc-js from the moment the call is made: a source that never settles holds
 * the call (an `AudienceTokens` source settles within its own RPC deadline).
 */
class BearerCall implements CallInterface {
  readonly #options: grpc.InterceptorOptions;
  readonly #nextCall: grpc.NextCall;
  readonly #source: BearerSource;
  #inner: CallInterface | undefined;
  #listener: Partial<grpc.InterceptingListener> | undefined;
  #waiting: ((inner: CallInterface) => void)[] = [];
  /** Set when the call ended before it was sent (source failed, or cancelled while waiting). */
  #ended: grpc.StatusObject | undefined;

  constructor(options: grpc.InterceptorOptions, nextCall: grpc.NextCall, source: BearerSource) {
    this.#options = options;
    this.#nextCall = nextCall;
    this.#source = source;
  }

  start(metadata: grpc.Metadata, listener?: Partial<grpc.InterceptingListener>): void {
    this.#listener = listener;
    if (this.#ended !== undefined) {
      // Cancelled before it started: report that now that there is a listener.
      this.#report(this.#ended);
      return;
    }
    let token: string | Promise<string>;
    try {
      token = this.#source.get();
    } catch (err) {
      this.#end(status.UNAUTHENTICATED, `no credential to send: ${describeFailure(err)}`);
      return;
    }
    if (typeof token === 'string') {
      this.#begin(metadata, token);
      return;
    }
    token.then(
      (value) => this.#begin(metadata, value),
      (err: unknown) => this.#end(status.UNAUTHENTICATED, `no credential to send: ${describeFailure(err)}`),
    );
  }

  #begin(metadata: grpc.Metadata, token: string): void {
    if (this.#ended !== undefined) return;
    try {
      wellFormedToken(token);
    } catch (err) {
      this.#end(status.UNAUTHENTICATED, `no credential to send: ${describeFailure(err)}`);
      return;
    }
    metadata.set('authorization', `Bearer ${token}`);
    const inner = this.#nextCall(this.#options);
    this.#inner = inner;
    inner.start(metadata, this.#listener);
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const operation of waiting) operation(inner);
  }

  /** Ends a call that was never sent, reporting `code` once. */
  #end(code: status, details: string): void {
    if (this.#ended !== undefined || this.#inner !== undefined) return;
    this.#ended = { code, details, metadata: new grpc.Metadata() };
    this.#waiting = [];
    if (this.#listener !== undefined) this.#report(this.#ended);
  }

  #report(ended: grpc.StatusObject): void {
    const listener = this.#listener;
    // On a later tick, as grpc-js reports its own failures: the caller's start() returns before its callback runs.
    queueMicrotask(() => listener?.onReceiveStatus?.(ended));
  }

  #whenSent(operation: (inner: CallInterface) => void): void {
    if (this.#inner !== undefined) operation(this.#inner);
    else if (this.#ended === undefined) this.#waiting.push(operation);
  }

  cancelWithStatus(code: status, details: string): void {
    if (this.#inner !== undefined) this.#inner.cancelWithStatus(code, details);
    else this.#end(code, details);
  }

  getPeer(): string {
    return this.#inner?.getPeer() ?? '';
  }

  getAuthContext(): ReturnType<CallInterface['getAuthContext']> {
    return this.#inner?.getAuthContext() ?? null;
  }

  sendMessageWithContext(context: MessageContext, message: unknown): void {
    this.#whenSent((inner) => inner.sendMessageWithContext(context, message));
  }

  sendMessage(message: unknown): void {
    this.#whenSent((inner) => inner.sendMessage(message));
  }

  startRead(): void {
    this.#whenSent((inner) => inner.startRead());
  }

  halfClose(): void {
    this.#whenSent((inner) => inner.halfClose());
  }
}

/**
 * A grpc-js interceptor that attaches `authorization: Bearer <token>`, read
 * from `source` at the start of each call (awaited when the source is
 * asynchronous). Works on any channel, insecure loopback included (grpc-js will
 * not combine CallCredentials with an insecure channel); it cannot see the
 * channel's target, so on a plaintext channel check it first with
 * `assertPlaintextAllowed(target)`, or build the client with `bearerChannel()`,
 * which does. When the source has no token the call ends UNAUTHENTICATED
 * without being sent; the token itself is never logged or put in an error.
 */
export function bearerInterceptor(source: BearerSource): grpc.Interceptor {
  return (options, nextCall) => new grpc.InterceptingCall(new BearerCall(options, nextCall, source));
}

/**
 * grpc-js `CallCredentials` reading `source` at each call, for TLS channels:
 * `grpc.credentials.combineChannelCredentials(grpc.credentials.createSsl(ca), callCredentials(source))`.
 * When the source has no token the call fails UNAUTHENTICATED.
 */
export function callCredentials(source: BearerSource): grpc.CallCredentials {
  return grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const refuse = (err: unknown): void => {
      // grpc-js takes the status from `code` (UNAUTHENTICATED passes its control-plane status filter).
      callback(Object.assign(new Error(`no credential to send: ${describeFailure(err)}`), { code: status.UNAUTHENTICATED }));
    };
    const attach = (token: string): void => {
      try {
        wellFormedToken(token);
      } catch (err) {
        refuse(err);
        return;
      }
      const metadata = new grpc.Metadata();
      metadata.set('authorization', `Bearer ${token}`);
      callback(null, metadata);
    };
    let token: string | Promise<string>;
    try {
      token = source.get();
    } catch (err) {
      refuse(err);
      return;
    }
    if (typeof token === 'string') attach(token);
    else token.then(attach, refuse);
  });
}

/**
 * The `authorization` header for HTTP tools, read at the moment of the call,
 * from a synchronous source (for an audience token, or to have the plaintext
 * rule checked, use `fetchAs`). Spread it into `fetch`'s headers; never log it.
 */
export function authorizationHeader(source: CredentialSource): { authorization: string } {
  return { authorization: `Bearer ${wellFormedToken(source.get())}` };
}
