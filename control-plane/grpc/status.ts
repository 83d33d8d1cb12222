import { Metadata, status, type sendUnaryData, type ServerUnaryCall, type StatusObject } from '@grpc/grpc-js';
import { TetherError, type TetherErrorCode } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';

const STATUS_BY_CODE: Readonly<Record<TetherErrorCode, status>> = {
  unauthenticated: status.UNAUTHENTICATED,
  'token-expired': status.UNAUTHENTICATED,
  'token-revoked': status.UNAUTHENTICATED,
  'permission-denied': status.PERMISSION_DENIED,
  'not-found': status.NOT_FOUND,
  'already-exists': status.ALREADY_EXISTS,
  'invalid-argument': status.INVALID_ARGUMENT,
  'failed-precondition': status.FAILED_PRECONDITION,
  'resource-exhausted': status.RESOURCE_EXHAUSTED,
  'out-of-range': status.OUT_OF_RANGE,
  unavailable: status.UNAVAILABLE,
  closed: status.UNAVAILABLE,
  protocol: status.FAILED_PRECONDITION,
};

/**
 * Turns anything thrown by a handler into the status the client sees: a
 * {@link TetherError} keeps its code and message (which never hold a token);
 * an abort is CANCELLED; anything else is INTERNAL with a generic message,
 * logged once here with its stack. grpc-js must never see a raw error: it
 * would send the error's message to the client.
 */
export function toStatus(err: unknown, logger: Logger, metadata?: Metadata): Partial<StatusObject> {
  if (err instanceof TetherError) {
    return { code: STATUS_BY_CODE[err.code], details: err.message, metadata: metadata ?? new Metadata() };
  }
  if (err instanceof Error && err.name === 'AbortError') {
    return { code: status.CANCELLED, details: 'cancelled', metadata: metadata ?? new Metadata() };
  }
  logger.error({ err }, 'internal error');
  return { code: status.INTERNAL, details: 'internal error', metadata: metadata ?? new Metadata() };
}

/**
 * Adapts an async handler to grpc-js's callback style, mapping errors once
 * through {@link toStatus}, a synchronous throw included: a handler that is not
 * `async` and throws before returning its promise (`listSigningKeys` with a
 * wrong admin token) used to reach grpc-js, which answered UNKNOWN.
 */
export function unary<Req, Res>(
  logger: Logger,
  handler: (request: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res>,
): (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void {
  return (call, callback) => {
    let response: Promise<Res>;
    try {
      response = handler(call.request, call);
    } catch (err) {
      // Answered on a later tick, as a rejection would be.
      queueMicrotask(() => callback(toStatus(err, logger)));
      return;
    }
    // Not a new promise resolved with the handler's (an allocation and two more ticks per call): Promise.resolve returns a native one as is.
    Promise.resolve(response).then(
      (result) => callback(null, result),
      (err: unknown) => callback(toStatus(err, logger)),
    );
  };
}
