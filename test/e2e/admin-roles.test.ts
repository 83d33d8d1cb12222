/**
 * Issue 19, Show 2, on real servers: for every AdminService method an admin
 * token and a viewer token are tried, and each result matches the role table
 * (a viewer refused: PERMISSION_DENIED; allowed: neither PERMISSION_DENIED nor
 * UNAUTHENTICATED); a retired token is refused at once, on this control plane
 * and on a second one sharing its store; the audit log holds each call with its
 * token id, and neither it nor the logs hold a secret or a payload.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { ADMIN_METHOD_ROLES, type AdminMethod } from '../../control-plane/auth/admin-roles.js';
import { ControlPlane } from '../../control-plane/control-plane.js';
import { databasePath, SqliteStore } from '../../control-plane/store/sqlite-store.js';
import { AdminServiceClient, AdminServiceService, type AuditRecordInfo } from '../../gen/tether/v1/admin.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { assertNoSecrets } from '../support/secrets.js';

const { PERMISSION_DENIED, UNAUTHENTICATED, OK } = grpc.status;
const PAYLOAD_CANARY = 'payload-canary-7f3e9b1c5d';

type AnyUnary = (request: unknown, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, callback: (err: grpc.ServiceError | null, response: unknown) => void) => grpc.ClientUnaryCall;
type AnyServerStream = (request: unknown, metadata: grpc.Metadata) => grpc.ClientReadableStream<unknown>;

/**
 * A server-streaming call's outcome: 'ok' at its first message (then cancelled),
 * or the status it ended with. Its request must make the server send at once
 * (WatchEvents from event 0: the kept events come first).
 */
function streamStatusOf(stream: grpc.ClientReadableStream<unknown>): Promise<grpc.status | 'ok'> {
  return new Promise((resolve) => {
    stream.once('data', () => {
      resolve('ok');
      stream.cancel();
    });
    stream.on('error', (err: grpc.ServiceError) => resolve(err.code));
    stream.once('end', () => resolve(OK));
  });
}

/** Every method, proto name. */
const rpcName = (method: string): string => AdminServiceService[method as AdminMethod].path.split('/').pop() as string;

describe('admin tokens with roles, and the audit log', () => {
  let harness: Harness | undefined;
  const closers: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    await harness?.close();
    harness = undefined;
  });

  it('tries every AdminService method with an admin and a viewer token: the results are the role table, and every call is audited without a secret', async () => {
    const h = await Harness.start();
    harness = h;
    const raw = new AdminServiceClient(h.target, grpc.credentials.createInsecure());
    closers.push(() => raw.close());
    const { host, hostId } = await h.startHost('alpha');
    await h.dispatch(host, hostId, 'a1');
    await h.dispatch(host, hostId, 'victim');
    const spare = await call(h.admin.enrollHost.bind(h.admin), { name: 'spare', joinTtlMs: 0 });
    await call(h.admin.sendMessages.bind(h.admin), { agentId: 'a1', messages: [{ payload: Buffer.from(PAYLOAD_CANARY), contentType: 'text/plain', idempotencyKey: '' }] });

    const addedAdmin = await call(h.admin.addAdminToken.bind(h.admin), { name: 'second admin', role: 'admin' });
    const addedViewer = await call(h.admin.addAdminToken.bind(h.admin), { name: 'read only', role: 'viewer' });
    const throwaway = await call(h.admin.addAdminToken.bind(h.admin), { name: 'to retire', role: 'viewer' });
    const adminId = addedAdmin.token?.tokenId as string;
    const viewerId = addedViewer.token?.tokenId as string;
    expect(addedAdmin.secretToken).toMatch(new RegExp(`^tadm_${adminId}\\.[A-Za-z0-9_-]{43}$`));
    expect(addedViewer.token).toMatchObject({ role: 'viewer', name: 'read only', createdBy: 'bootstrap', retiredAtMs: 0 });
    const secrets = [h.adminToken, addedAdmin.secretToken, addedViewer.secretToken, throwaway.secretToken, spare.joinToken, PAYLOAD_CANARY];

    // The one request per method the test sends (the defaults, plus what makes each call meaningful).
    const overrides: Partial<Record<AdminMethod, Record<string, unknown>>> = {
      enrollHost: { name: 'enrolled-by-test' },
      revokeHost: { hostId: spare.hostId },
      drainHost: { hostId: 'no-such-host' },
      uncordonHost: { hostId: 'no-such-host' },
      dispatchAgent: { agentId: 'd1', spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' }, hostId },
      ensureAgent: { agentId: 'e1', spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' } },
      stopAgent: { agentId: 'victim', reason: 'test' },
      rotateAgentCredential: { agentId: 'a1' },
      getAgent: { agentId: 'a1' },
      describeAgent: { agentId: 'a1' },
      revokeSigningKey: { keyId: 'no-such-key' },
      sendMessages: { agentId: 'a1', messages: [{ payload: Buffer.from(PAYLOAD_CANARY), contentType: '', idempotencyKey: '' }] },
      listMessages: { agentId: 'a1', state: 'pending' },
      requeueMessage: { agentId: 'a1', seq: 99 },
      purgeMessage: { agentId: 'a1', seq: 99 },
      addAdminToken: { name: 'made in the loop', role: 'viewer' },
      retireAdminToken: { tokenId: throwaway.token?.tokenId },
      listAuditRecords: { tokenId: viewerId },
      watchEvents: { afterEventId: 0 },
    };
    const methods = Object.keys(AdminServiceService) as AdminMethod[];
    const got: Record<string, { viewer: grpc.status | 'ok'; admin: grpc.status | 'ok' }> = {};
    for (const method of methods) {
      const spec = AdminServiceService[method];
      const request = { ...(spec.requestDeserialize(Buffer.alloc(0))), ...overrides[method] };
      const outcome = (token: string): Promise<grpc.status | 'ok'> =>
        spec.responseStream
          ? streamStatusOf((raw[method] as unknown as AnyServerStream).call(raw, request, bearer(token)))
          : statusOf(call((raw[method] as unknown as AnyUnary).bind(raw), request, bearer(token)));
      // The viewer first: a refusal changes nothing, so the admin's call meets the state the request was written for.
      const viewer = await outcome(addedViewer.secretToken);
      const admin = await outcome(addedAdmin.secretToken);
      got[rpcName(method)] = { viewer, admin };
    }
    for (const method of methods) {
      const { viewer, admin } = got[rpcName(method)] as { viewer: grpc.status | 'ok'; admin: grpc.status | 'ok' };
      const where = `${rpcName(method)}: viewer ${String(viewer)}, admin ${String(admin)}`;
      expect([PERMISSION_DENIED, UNAUTHENTICATED], where).not.toContain(admin);
      if (ADMIN_METHOD_ROLES[method] === 'viewer') expect([PERMISSION_DENIED, UNAUTHENTICATED], where).not.toContain(viewer);
      else expect(viewer, where).toBe(PERMISSION_DENIED);
    }
    // The calls did what they were asked (so "allowed" meant it): not every allowed call is merely "not refused".
    expect(got.StopAgent?.admin).toBe('ok');
    expect(got.ListAgents).toEqual({ viewer: 'ok', admin: 'ok' });
    expect(got.WatchEvents).toEqual({ viewer: 'ok', admin: 'ok' });
    expect(got.RetireAdminToken?.admin).toBe('ok');
    expect((await h.store.getAgent('victim'))?.state).toBe('stopped');

    // The refusal tells the viewer what it lacks, never a secret.
    const refusal = await call(raw.stopAgent.bind(raw), { agentId: 'a1', reason: '' }, bearer(addedViewer.secretToken)).catch((err: grpc.ServiceError) => err);
    expect(refusal).toMatchObject({ code: PERMISSION_DENIED, details: `StopAgent needs the admin role; admin token ${viewerId} has the viewer role` });
    // A call with no valid token at all: UNAUTHENTICATED, and not audited.
    expect(await statusOf(call(raw.listAgents.bind(raw), { pageSize: 0, pageToken: '', hostId: '' }, bearer(`tadm_${'0'.repeat(16)}.${'A'.repeat(43)}`)))).toBe(UNAUTHENTICATED);

    // The audit log: every call above, each with its token id, method and code.
    const records: AuditRecordInfo[] = [];
    for (let pageToken = '', page = 0; page < 100; page++) {
      const response = await call(h.admin.listAuditRecords.bind(h.admin), { pageSize: 7, pageToken, tokenId: '', sinceMs: 0 });
      records.push(...response.records);
      pageToken = response.nextPageToken;
      if (pageToken === '') break;
    }
    for (const method of methods) {
      const name = rpcName(method);
      const of = (tokenId: string): AuditRecordInfo[] => records.filter((r) => r.tokenId === tokenId && r.method === name);
      const expected = got[name] as { viewer: grpc.status | 'ok'; admin: grpc.status | 'ok' };
      const code = (s: grpc.status | 'ok'): number => (s === 'ok' ? OK : s);
      expect(of(viewerId).map((r) => r.code), `${name} by the viewer`).toContain(code(expected.viewer));
      expect(of(adminId).map((r) => r.code), `${name} by the admin`).toContain(code(expected.admin));
    }
    expect(records.every((r) => r.atMs === h.clock.now())).toBe(true);
    expect(records.filter((r) => r.tokenId === 'bootstrap').map((r) => r.method).slice(0, 5)).toEqual(['EnrollHost', 'DispatchAgent', 'DispatchAgent', 'EnrollHost', 'SendMessages']);
    expect(records.find((r) => r.tokenId === adminId && r.method === 'StopAgent')).toMatchObject({ code: OK, status: 'OK', targets: [{ kind: 'agent', id: 'victim' }] });
    expect(records.find((r) => r.tokenId === viewerId && r.method === 'StopAgent')).toMatchObject({ code: PERMISSION_DENIED, status: 'PERMISSION_DENIED' });
    expect(records.find((r) => r.tokenId === 'bootstrap' && r.method === 'AddAdminToken' && r.targets.some((t) => t.kind === 'token' && t.id === viewerId))).toBeDefined();
    expect(records.some((r) => r.tokenId === '0'.repeat(16))).toBe(false);
    // The ids are increasing (oldest first) across pages.
    expect(records.map((r) => r.id)).toEqual([...records.map((r) => r.id)].sort((a, b) => a - b));
    // By token: only that token's calls.
    const viewerOnly = await call(h.admin.listAuditRecords.bind(h.admin), { pageSize: 1000, pageToken: '', tokenId: viewerId, sinceMs: 0 });
    expect(viewerOnly.records.length).toBe(records.filter((r) => r.tokenId === viewerId).length);

    // No secret and no payload: in the audit rows (as the API returns them and as the store holds them), nor in the logs.
    assertNoSecrets(JSON.stringify(records), secrets, 'the audit records');
    const rows = await h.store.listAudit({ afterId: 0, limit: 100_000 });
    // Reading the log is audited too: the last page's call and the by-token call came after what was read.
    expect(rows.length).toBe(records.length + 2);
    expect(rows.slice(-2).map((r) => [r.tokenId, r.method])).toEqual([['bootstrap', 'ListAuditRecords'], ['bootstrap', 'ListAuditRecords']]);
    assertNoSecrets(JSON.stringify(rows), secrets, 'the audit rows in the store');
    assertNoSecrets(h.logs.text(), secrets, 'the logs');
  });

  it('refuses a retired token at once, on this control plane and on another one sharing its store; the bootstrap token cannot be retired', async () => {
    const h = await Harness.start();
    harness = h;
    const other = await ControlPlane.start({
      store: SqliteStore.open(databasePath(h.dir)),
      clock: h.clock,
      logger: h.logs.logger,
      adminToken: h.adminToken,
      address: '127.0.0.1:0',
      isRotationEnabled: false,
    });
    closers.push(() => other.close());
    const raw = new AdminServiceClient(h.target, grpc.credentials.createInsecure());
    const rawOther = new AdminServiceClient(`127.0.0.1:${other.port}`, grpc.credentials.createInsecure());
    closers.push(() => raw.close(), () => rawOther.close());
    const listAgents = (client: AdminServiceClient, token: string): Promise<grpc.status | 'ok'> =>
      statusOf(call(client.listAgents.bind(client), { pageSize: 0, pageToken: '', hostId: '' }, bearer(token)));

    const added = await call(h.admin.addAdminToken.bind(h.admin), { name: 'soon gone', role: 'admin' });
    const tokenId = added.token?.tokenId as string;
    // Added on one, valid on both at once.
    expect([await listAgents(raw, added.secretToken), await listAgents(rawOther, added.secretToken)]).toEqual(['ok', 'ok']);
    // A wrong secret with a real id: refused.
    expect(await listAgents(raw, `tadm_${tokenId}.${'B'.repeat(43)}`)).toBe(UNAUTHENTICATED);

    const retired = await call(h.admin.retireAdminToken.bind(h.admin), { tokenId });
    expect(retired.token).toMatchObject({ tokenId, retiredAtMs: h.clock.now() });
    const refused = await call(raw.listAgents.bind(raw), { pageSize: 0, pageToken: '', hostId: '' }, bearer(added.secretToken)).catch((err: grpc.ServiceError) => err);
    expect(refused).toMatchObject({ code: UNAUTHENTICATED, details: `admin token ${tokenId} is retired` });
    expect(await listAgents(rawOther, added.secretToken)).toBe(UNAUTHENTICATED);
    // Counted by a fixed word each (never the token): the wrong secret and the retired token.
    const metrics = await h.cp.metrics.metrics();
    expect(metrics).toMatch(/^tether_auth_failures_total\{principal="admin",reason="wrong-admin-token"\} 1$/m);
    expect(metrics).toMatch(/^tether_auth_failures_total\{principal="admin",reason="retired-admin-token"\} 1$/m);
    // Retiring again is harmless; the bootstrap token is refused; an unknown id is not found.
    expect((await call(h.admin.retireAdminToken.bind(h.admin), { tokenId })).token?.retiredAtMs).toBe(retired.token?.retiredAtMs);
    expect(await statusOf(call(h.admin.retireAdminToken.bind(h.admin), { tokenId: 'bootstrap' }))).toBe(grpc.status.FAILED_PRECONDITION);
    expect(await statusOf(call(h.admin.retireAdminToken.bind(h.admin), { tokenId: 'nope' }))).toBe(grpc.status.NOT_FOUND);
    expect(await listAgents(raw, h.adminToken)).toBe('ok');

    // ls: the bootstrap first, then the added ones with their state; never a hash or a secret.
    const listed = await call(h.admin.listAdminTokens.bind(h.admin), { pageSize: 0, pageToken: '' });
    expect(listed.tokens.map((t) => [t.tokenId, t.role, t.retiredAtMs > 0])).toEqual([['bootstrap', 'admin', false], [tokenId, 'admin', true]]);
    assertNoSecrets(JSON.stringify(listed), [added.secretToken, added.secretToken.split('.')[1] as string, h.adminToken], 'tokens ls');
  });
});
