/** How a heartbeat's outcome becomes a metric label: a fixed word for each gRPC status that matters. */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { heartbeatResult } from '../../agent-host/metrics.js';

const failed = (code: grpc.status | undefined): Parameters<typeof heartbeatResult>[0] => ({
  agentId: 'a',
  isOk: false,
  generation: 1,
  error: Object.assign(new Error('failed'), code === undefined ? {} : { code }),
});

describe('heartbeatResult', () => {
  it.each([
    [grpc.status.UNAUTHENTICATED, 'unauthenticated'],
    [grpc.status.PERMISSION_DENIED, 'permission_denied'],
    [grpc.status.UNAVAILABLE, 'unavailable'],
    [grpc.status.DEADLINE_EXCEEDED, 'unavailable'],
    [grpc.status.INTERNAL, 'error'],
    [undefined, 'error'],
  ])('labels status %s as %s', (code, label) => {
    expect(heartbeatResult(failed(code))).toBe(label);
  });

  it('labels a successful heartbeat ok', () => {
    expect(heartbeatResult({ agentId: 'a', isOk: true, generation: 1 })).toBe('ok');
  });
});
