import { status, type ServerUnaryCall, type StatusObject } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { UnauthenticatedError } from '../../../common/errors.js';
import { unary } from '../../../control-plane/grpc/status.js';
import { LogCapture } from '../../support/log-capture.js';

describe('unary', () => {
  it('maps a synchronous throw as it maps a rejection (a non-async handler once answered UNKNOWN)', async () => {
    const logs = new LogCapture();
    const handlers = [
      (): Promise<never> => {
        throw new UnauthenticatedError('not the admin token');
      },
      (): Promise<never> => Promise.reject(new UnauthenticatedError('not the admin token')),
    ];
    for (const handler of handlers) {
      const answered = await new Promise<Partial<StatusObject> | null>((resolve) => {
        unary(logs.logger, handler)({ request: {} } as ServerUnaryCall<object, never>, (err) => resolve(err));
      });
      expect(answered).toMatchObject({ code: status.UNAUTHENTICATED, details: 'not the admin token' });
    }
  });
});
