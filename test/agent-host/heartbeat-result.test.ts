/**
 * How a heartbeat's outcome becomes a metric label. The errors here are built
 * as the heartbeat loop receives them: a grpc-js ServiceError turned into a
 * typed error by `fromServiceError` (string `code`, the status in `cause`),
 * which is what the old label function never matched.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { TokenExpiredError, TokenRevokedError, UnavailableError } from '../../common/errors.js';
import { HEARTBEAT_RESULTS, heartbeatResult, type HeartbeatResult } from '../../agent-host/heartbeat-result.js';
import { fromServiceError } from '../../agent-host/tools/service-errors.js';

/** What grpc-js hands a unary callback for a call that ended with `code`. */
function serviceError(code: grpc.status): grpc.ServiceError {
  return Object.assign(new Error(`${code} ${grpc.status[code]}: failed`), { code, details: 'failed', metadata: new grpc.Metadata() });
}

const failedWith = (error: Error): { isOk: boolean; error: Error } => ({ isOk: false, error });

describe('heartbeatResult', () => {
  it('labels a successful heartbeat ok', () => {
    expect(heartbeatResult({ isOk: true })).toBe('ok');
  });

  it.each<[grpc.status, HeartbeatResult]>([
    [grpc.status.UNAUTHENTICATED, 'unauthenticated'],
    [grpc.status.PERMISSION_DENIED, 'permission_denied'],
    [grpc.status.UNAVAILABLE, 'unavailable'],
    [grpc.status.DEADLINE_EXCEEDED, 'unavailable'],
    [grpc.status.INTERNAL, 'error'],
    [grpc.status.UNIMPLEMENTED, 'error'],
    [grpc.status.NOT_FOUND, 'error'],
    [grpc.status.RESOURCE_EXHAUSTED, 'error'],
  ])('labels a call that ended with status %s as %s (typed by the client)', (code, label) => {
    expect(heartbeatResult(failedWith(fromServiceError(serviceError(code))))).toBe(label);
  });

  it.each<[grpc.status, HeartbeatResult]>([
    [grpc.status.UNAUTHENTICATED, 'unauthenticated'],
    [grpc.status.PERMISSION_DENIED, 'permission_denied'],
    [grpc.status.UNAVAILABLE, 'unavailable'],
    [grpc.status.INTERNAL, 'error'],
  ])('labels a raw ServiceError with status %s as %s', (code, label) => {
    expect(heartbeatResult(failedWith(serviceError(code)))).toBe(label);
  });

  it.each<[string, Error, HeartbeatResult]>([
    ['an expired token', new TokenExpiredError(), 'unauthenticated'],
    ['a revoked token', new TokenRevokedError(), 'unauthenticated'],
    ['an unreachable server', new UnavailableError('down'), 'unavailable'],
    ['an untyped error', new Error('boom'), 'error'],
  ])('labels a typed error raised before any call (%s) by its code', (_what, error, label) => {
    expect(heartbeatResult(failedWith(error))).toBe(label);
  });

  it('labels a failure without an error as error', () => {
    expect(heartbeatResult({ isOk: false })).toBe('error');
  });

  it('has exactly the five labels the metric documents', () => {
    expect([...HEARTBEAT_RESULTS].sort()).toEqual(['error', 'ok', 'permission_denied', 'unauthenticated', 'unavailable']);
  });
});
