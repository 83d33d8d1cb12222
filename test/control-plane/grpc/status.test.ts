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

  it("answers with the handler's response, and never before the handler call returns (a synchronous throw included)", async () => {
    const logs = new LogCapture();
    const handlers = [
      (): Promise<{ ok: boolean }> => Promise.resolve({ ok: true }),
      (): Promise<{ ok: boolean }> => {
        throw new UnauthenticatedError('no');
      },
    ];
    const answers: unknown[] = [];
    for (const handler of handlers) {
      let isReturned = false;
      const answered = new Promise<void>((resolve) => {
        unary(logs.logger, handler)({ request: {} } as ServerUnaryCall<object, { ok: boolean }>, (err, value) => {
          answers.push({ isReturned, code: err?.code, value });
          resolve();
        });
      });
      isReturned = true;
      await answered;
    }
    expect(answers).toEqual([
      { isReturned: true, code: undefined, value: { ok: true } },
      { isReturned: true, code: status.UNAUTHENTICATED, value: undefined },
    ]);
  });
});
