import { status } from '@grpc/grpc-js';
import { TetherError } from '../common/errors.js';
import { isServiceError } from './tools/service-errors.js';

/** A heartbeat's outcome as a metric label: a fixed word, never a token or an id. */
export type HeartbeatResult = 'ok' | 'unauthenticated' | 'permission_denied' | 'unavailable' | 'error';

/** Every {@link HeartbeatResult}, for metrics that start each label at 0. */
export const HEARTBEAT_RESULTS: readonly HeartbeatResult[] = ['ok', 'unauthenticated', 'permission_denied', 'unavailable', 'error'];

/** How far down a `cause` chain to look for the gRPC status (a chain is short; a cycle must not hang). */
const MAX_CAUSE_DEPTH = 8;

/**
 * Labels a heartbeat's outcome. The client hands back a typed error
 * (`fromServiceError`), whose `code` is a string and whose `cause` is the
 * grpc-js ServiceError: the numeric status is read from that cause, so a
 * status the typed codes fold together (INTERNAL becomes a TetherError coded
 * `unavailable`) is still told apart. A typed error without a status (raised
 * before any call) is labelled by its code.
 */
export function heartbeatResult(event: { isOk: boolean; error?: Error }): HeartbeatResult {
  if (event.isOk) return 'ok';
  const code = grpcStatusOf(event.error);
  if (code !== undefined) return labelOfStatus(code);
  return event.error instanceof TetherError ? labelOfTetherCode(event.error) : 'error';
}

/** The gRPC status of `err` or of the first ServiceError in its `cause` chain. */
function grpcStatusOf(err: unknown): status | undefined {
  let current = err;
  for (let depth = 0; depth < MAX_CAUSE_DEPTH && current instanceof Error; depth++) {
    if (isServiceError(current)) return current.code;
    current = current.cause;
  }
  return undefined;
}

function labelOfStatus(code: status): HeartbeatResult {
  switch (code) {
    case status.UNAUTHENTICATED:
      return 'unauthenticated';
    case status.PERMISSION_DENIED:
      return 'permission_denied';
    case status.UNAVAILABLE:
    case status.DEADLINE_EXCEEDED:
      return 'unavailable';
    default:
      return 'error';
  }
}

function labelOfTetherCode(err: TetherError): HeartbeatResult {
  switch (err.code) {
    case 'unauthenticated':
    case 'token-expired':
    case 'token-revoked':
      return 'unauthenticated';
    case 'permission-denied':
      return 'permission_denied';
    case 'unavailable':
      return 'unavailable';
    default:
      return 'error';
  }
}
