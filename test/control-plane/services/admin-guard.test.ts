/**
 * The admin guard on server streams (AdminService has none yet; WatchEvents will
 * be one), on a real server at 127.0.0.1:0: a stream the role allows is let
 * through and audited OK, one it does not is refused with PERMISSION_DENIED and
 * audited as such, an unknown token is UNAUTHENTICATED and not audited. And the
 * guard refuses to start on a method with no role, or a client stream.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../../control-plane/audit/audit-log.js';
import { AdminTokens } from '../../../control-plane/auth/admin-tokens.js';
import { Authenticator } from '../../../control-plane/auth/authenticator.js';
import { guardAdminService } from '../../../control-plane/services/admin-guard.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import type { TokenVerifier } from '../../../control-plane/tokens/token-verifier.js';
import { FakeClock } from '../../support/fake-clock.js';
import { bearer } from '../../support/harness.js';
import { LogCapture } from '../../support/log-capture.js';

const json = {
  requestSerialize: (value: unknown): Buffer => Buffer.from(JSON.stringify(value)),
  requestDeserialize: (bytes: Buffer): unknown => JSON.parse(bytes.length === 0 ? '{}' : bytes.toString()) as unknown,
  responseSerialize: (value: unknown): Buffer => Buffer.from(JSON.stringify(value)),
  responseDeserialize: (bytes: Buffer): unknown => JSON.parse(bytes.toString()) as unknown,
};

/** Two server streams under the names of a viewer's method and an admin's. */
const DEFINITION = {
  listAgents: { path: '/test.Guard/ListAgents', requestStream: false, responseStream: true, ...json },
  stopAgent: { path: '/test.Guard/StopAgent', requestStream: false, responseStream: true, ...json },
} as unknown as grpc.ServiceDefinition;

const streamed: grpc.handleServerStreamingCall<unknown, unknown> = (call) => {
  call.write({ item: 1 });
  call.end();
};

describe('guardAdminService on server streams', () => {
  let dir: string;
  let store: SqliteStore;
  let server: grpc.Server;
  let client: grpc.Client & Record<string, (request: unknown, metadata: grpc.Metadata) => grpc.ClientReadableStream<unknown>>;
  let audit: AuditLog;
  let adminTokens: AdminTokens;
  const logs = new LogCapture();
  const clock = new FakeClock();

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tether-admin-guard-'));
    store = SqliteStore.open(join(dir, 'tether.db'));
    adminTokens = new AdminTokens({ store, bootstrapToken: 'bootstrap-secret-for-the-guard-test', clock });
    audit = new AuditLog({ store, clock, logger: logs.logger, maxAgeMs: 3_600_000, maxRecords: 1_000 });
    // The admin path never verifies a JWT; the verifier is only asked about agent and host tokens.
    const authenticator = new Authenticator({ verifier: undefined as unknown as TokenVerifier, adminTokens });
    server = new grpc.Server();
    server.addService(DEFINITION, guardAdminService(DEFINITION, { listAgents: streamed, stopAgent: streamed }, { authenticator, audit, logger: logs.logger }));
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err === null ? resolve(p) : reject(err))));
    const Client = grpc.makeGenericClientConstructor(DEFINITION, 'Guard');
    client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as typeof client;
  });

  afterEach(async () => {
    client.close();
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    await audit.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** What a stream brought, and how it ended. */
  function read(method: string, token: string): Promise<{ items: unknown[]; code: grpc.status }> {
    return new Promise((resolve) => {
      const items: unknown[] = [];
      const stream = client[method]?.({}, bearer(token));
      if (stream === undefined) throw new Error(`no client method ${method}`);
      stream.on('data', (item: unknown) => items.push(item));
      stream.on('error', (err: grpc.ServiceError) => resolve({ items, code: err.code }));
      stream.on('status', (status: grpc.StatusObject) => {
        if (status.code === grpc.status.OK) resolve({ items, code: status.code });
      });
    });
  }

  it('lets a viewer read the stream its role allows, refuses the other with PERMISSION_DENIED, and audits both; an unknown token is not audited', async () => {
    const { record, token } = await adminTokens.add('watcher', 'viewer', 'bootstrap');
    expect(await read('listAgents', token)).toEqual({ items: [{ item: 1 }], code: grpc.status.OK });
    expect(await read('stopAgent', token)).toEqual({ items: [], code: grpc.status.PERMISSION_DENIED });
    expect(await read('stopAgent', 'bootstrap-secret-for-the-guard-test')).toEqual({ items: [{ item: 1 }], code: grpc.status.OK });
    expect(await read('listAgents', `tadm_${record.tokenId}.${'x'.repeat(43)}`)).toEqual({ items: [], code: grpc.status.UNAUTHENTICATED });
    const rows = await store.listAudit({ afterId: 0, limit: 10 });
    expect(rows.map((r) => [r.tokenId, r.method, r.code])).toEqual([
      [record.tokenId, 'ListAgents', grpc.status.OK],
      [record.tokenId, 'StopAgent', grpc.status.PERMISSION_DENIED],
      ['bootstrap', 'StopAgent', grpc.status.OK],
    ]);
  });

  it('refuses to start on a method with no role (fail closed) or on a client stream', () => {
    const authenticator = new Authenticator({ verifier: undefined as unknown as TokenVerifier, adminTokens });
    const deps = { authenticator, audit, logger: logs.logger };
    const unknown = { watchNothing: { path: '/test.Guard/WatchNothing', requestStream: false, responseStream: true, ...json } } as unknown as grpc.ServiceDefinition;
    expect(() => guardAdminService(unknown, { watchNothing: streamed }, deps)).toThrow('/test.Guard/WatchNothing has no role in ADMIN_METHOD_ROLES');
    const clientStream = { listAgents: { path: '/test.Guard/ListAgents', requestStream: true, responseStream: false, ...json } } as unknown as grpc.ServiceDefinition;
    expect(() => guardAdminService(clientStream, { listAgents: streamed }, deps)).toThrow(/client stream/);
  });
});
