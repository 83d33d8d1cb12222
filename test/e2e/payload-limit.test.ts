/**
 * The largest payload `control-plane serve` can be told to accept
 * (--max-payload-bytes at its ceiling) reaches an agent on a real host intact,
 * on the host's one stream: a Deliver carrying it fits the host's receive limit.
 * (A larger flag is refused: test/control-plane/main.test.ts.) The control
 * plane is the real binary, so the flag's value is what the server runs with.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule, DeliveredMessage } from '../../agent-host/tools/agent-module.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { SystemClock } from '../../common/clock.js';
import { MAX_PAYLOAD_BYTES_CEILING } from '../../common/protocol.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { ControlPlaneProcess } from '../support/control-plane-process.js';
import { call, statusOf } from '../support/harness.js';
import { LogCapture } from '../support/log-capture.js';
import { nextEvent } from '../support/wait.js';

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

describe('the payload limit', () => {
  const cleanups: (() => Promise<unknown> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
    cleanups.length = 0;
  });

  it('delivers the largest payload the flag accepts to a real host, on its one stream', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tether-payload-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const adminToken = `admin-${randomBytes(24).toString('base64url')}`;
    const cp = await ControlPlaneProcess.start({ dataDir, adminToken, env: { TETHER_MAX_PAYLOAD_BYTES: String(MAX_PAYLOAD_BYTES_CEILING) } });
    cleanups.push(() => cp.close());
    const target = `127.0.0.1:${cp.port}`;
    const admin = new AdminServiceClient(target, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor({ get: () => adminToken })] });
    cleanups.push(() => admin.close());

    const received: DeliveredMessage[] = [];
    const module: AgentModule = () => ({
      onMessage: (message) => {
        received.push(message);
        return Promise.resolve();
      },
    });
    const enrolled = await call(admin.enrollHost.bind(admin), { name: 'big-mail', joinTtlMs: 0 });
    const host = AgentHost.start({
      target,
      clock: new SystemClock(),
      logger: new LogCapture('info').logger,
      credentialStore: new MemoryHostCredentialStore(),
      joinToken: enrolled.joinToken,
      modules: new Map([['sink', module]]),
    });
    cleanups.push(() => host.close());
    let connects = 0;
    host.events.on('connected', () => connects++);
    await nextEvent(host.events, 'connected');
    const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === 'sink');
    await call(admin.dispatchAgent.bind(admin), {
      agentId: 'sink',
      name: 'sink',
      hostId: enrolled.hostId,
      hostLabels: [],
      spec: { kind: 'module', module: 'sink', command: '', args: [], config: '' },
    });
    await started;

    const payload = randomBytes(MAX_PAYLOAD_BYTES_CEILING);
    const taken = nextEvent<{ agentId: string; seq: number }>(host.events, 'message-taken', (e) => e.agentId === 'sink');
    await call(admin.sendMessages.bind(admin), { agentId: 'sink', messages: [{ payload, contentType: 'application/octet-stream', idempotencyKey: 'k'.repeat(256) }] });
    // One byte more is refused at the send.
    const tooLarge = { payload: Buffer.alloc(MAX_PAYLOAD_BYTES_CEILING + 1), contentType: 'application/octet-stream', idempotencyKey: '' };
    expect(await statusOf(call(admin.sendMessages.bind(admin), { agentId: 'sink', messages: [tooLarge] }))).toBe(grpc.status.INVALID_ARGUMENT);
    await taken;
    expect(received).toHaveLength(1);
    expect(received[0]?.payload.length).toBe(MAX_PAYLOAD_BYTES_CEILING);
    expect(sha256(received[0]?.payload ?? new Uint8Array())).toBe(sha256(payload));
    // One stream the whole time: the Deliver did not exceed the host's receive limit and end it.
    expect(connects).toBe(1);
    expect(host.state).toBe('connected');
  });
});
