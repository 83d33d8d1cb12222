import * as grpc from '@grpc/grpc-js';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import type { AgentServiceClient } from '../../gen/tether/v1/agent.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { probeHostConnect } from '../support/host-stream-probe.js';
import { nextEvent } from '../support/wait.js';

const { OK, UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT } = grpc.status;

describe('authorization: each principal is accepted by exactly one service, as itself', () => {
  let harness: Harness | undefined;
  let rawAdmin: AdminServiceClient | undefined;
  let host: AgentHost;
  let hostId: string;
  let hostToken: string;
  /** A raw AgentService client (closed by the harness); each call brings the metadata under test. */
  let agentApi: AgentServiceClient;
  /** Each started agent's read-only credentials, as its module was given them. */
  let captured: Map<string, ReadOnlyCredentials>;

  beforeEach(async () => {
    captured = new Map();
    const grab: AgentModule = (ctx) => {
      captured.set(ctx.agentId, ctx.credentials);
      return {};
    };
    const credentialStore = new MemoryHostCredentialStore();
    harness = await Harness.start();
    ({ host, hostId } = await harness.startHost('alpha', { credentialStore, modules: new Map([['grab', grab]]) }));
    await harness.dispatch(host, hostId, 'A', 'grab');
    await harness.dispatch(host, hostId, 'B', 'grab');
    const stored = await credentialStore.load();
    if (stored === undefined) throw new Error('the host stored no credential');
    hostToken = stored.token;
    // An admin client with no credentials of its own: each call brings the metadata under test.
    rawAdmin = new AdminServiceClient(harness.target, grpc.credentials.createInsecure());
    agentApi = harness.agentClient();
  });

  afterEach(async () => {
    rawAdmin?.close();
    rawAdmin = undefined;
    await harness?.close();
    harness = undefined;
  });

  function need<T>(value: T | undefined, what: string): T {
    if (value === undefined) throw new Error(`no ${what}`);
    return value;
  }

  function tokenOf(agentId: string): string {
    return need(captured.get(agentId), `credentials for ${agentId}`).get();
  }

  function whoAmI(metadata: grpc.Metadata): Promise<grpc.status | 'ok'> {
    return statusOf(call(agentApi.whoAmI.bind(agentApi), {}, metadata));
  }

  function heartbeat(agentId: string, metadata: grpc.Metadata): Promise<grpc.status | 'ok'> {
    return statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId }, metadata));
  }

  function listAgents(metadata: grpc.Metadata): Promise<grpc.status | 'ok'> {
    const admin = need(rawAdmin, 'admin client');
    return statusOf(call(admin.listAgents.bind(admin), { pageSize: 0, pageToken: '', hostId: '' }, metadata));
  }

  async function lastHeartbeatMs(agentId: string): Promise<number> {
    const admin = need(harness, 'harness').admin;
    const response = await call(admin.getAgent.bind(admin), { agentId });
    return need(response.agent, `agent ${agentId}`).lastHeartbeatMs;
  }

  it('the host token the test reads is a real host credential for this host', () => {
    // Guards the matrix below: a "host token" that is not one would make its rows vacuous.
    expect(decodeProtectedHeader(hostToken).typ).toBe('tether-host+jwt');
    expect(decodeJwt(hostToken).sub).toBe(hostId);
    expect(decodeProtectedHeader(tokenOf('A')).typ).toBe('tether-agent+jwt');
    expect(decodeJwt(tokenOf('A')).sub).toBe('A');
  });

  it("refuses agent A's token acting as B with PERMISSION_DENIED, and records nothing for B", async () => {
    const asA = bearer(tokenOf('A'));
    expect(await heartbeat('B', asA)).toBe(PERMISSION_DENIED);
    // Not NOT_FOUND for an agent that does not exist: a token is no oracle of which agents do.
    expect(await heartbeat('nobody', asA)).toBe(PERMISSION_DENIED);
    expect(await lastHeartbeatMs('B')).toBe(0);

    // The same tokens, each acting as itself, are accepted.
    expect(await heartbeat('A', asA)).toBe('ok');
    expect(await lastHeartbeatMs('A')).toBe(harness?.clock.now());
    expect(await heartbeat('B', bearer(tokenOf('B')))).toBe('ok');
    expect(await lastHeartbeatMs('B')).toBe(harness?.clock.now());
  });

  // Expected status per principal and service: OK only on the diagonal. On
  // Connect, INVALID_ARGUMENT means "authenticated, then refused for sending a
  // Ping before Hello" (see probeHostConnect); anything refused at the door is
  // UNAUTHENTICATED.
  type Probe = 'AdminService.ListAgents' | 'AgentService.WhoAmI' | 'AgentService.Heartbeat' | 'HostService.Connect';
  type Principal = 'admin token' | 'agent token' | 'host token' | 'wrong admin token' | 'no authorization header';
  const matrix: [Principal, Record<Probe, grpc.status>][] = [
    [
      'admin token',
      { 'AdminService.ListAgents': OK, 'AgentService.WhoAmI': UNAUTHENTICATED, 'AgentService.Heartbeat': UNAUTHENTICATED, 'HostService.Connect': UNAUTHENTICATED },
    ],
    [
      'agent token',
      { 'AdminService.ListAgents': UNAUTHENTICATED, 'AgentService.WhoAmI': OK, 'AgentService.Heartbeat': OK, 'HostService.Connect': UNAUTHENTICATED },
    ],
    [
      'host token',
      { 'AdminService.ListAgents': UNAUTHENTICATED, 'AgentService.WhoAmI': UNAUTHENTICATED, 'AgentService.Heartbeat': UNAUTHENTICATED, 'HostService.Connect': INVALID_ARGUMENT },
    ],
    [
      'wrong admin token',
      { 'AdminService.ListAgents': UNAUTHENTICATED, 'AgentService.WhoAmI': UNAUTHENTICATED, 'AgentService.Heartbeat': UNAUTHENTICATED, 'HostService.Connect': UNAUTHENTICATED },
    ],
    [
      'no authorization header',
      { 'AdminService.ListAgents': UNAUTHENTICATED, 'AgentService.WhoAmI': UNAUTHENTICATED, 'AgentService.Heartbeat': UNAUTHENTICATED, 'HostService.Connect': UNAUTHENTICATED },
    ],
  ];

  function metadataOf(principal: Principal): grpc.Metadata {
    const h = need(harness, 'harness');
    switch (principal) {
      case 'admin token':
        return bearer(h.adminToken);
      case 'agent token':
        return bearer(tokenOf('A'));
      case 'host token':
        return bearer(hostToken);
      case 'wrong admin token':
        // Same length and alphabet as the real one, last character changed.
        return bearer(`${h.adminToken.slice(0, -1)}${h.adminToken.endsWith('0') ? '1' : '0'}`);
      case 'no authorization header':
        return new grpc.Metadata();
    }
  }

  async function probe(what: Probe, metadata: grpc.Metadata): Promise<grpc.status> {
    const h = need(harness, 'harness');
    switch (what) {
      case 'AdminService.ListAgents':
        return toCode(await listAgents(metadata));
      case 'AgentService.WhoAmI':
        return toCode(await whoAmI(metadata));
      case 'AgentService.Heartbeat':
        return toCode(await heartbeat('A', metadata));
      case 'HostService.Connect':
        return (await probeHostConnect(h.target, metadata)).code;
    }
  }

  it.each(matrix)('%s: accepted only by its own service', async (principal, expected) => {
    const got: Partial<Record<Probe, grpc.status>> = {};
    for (const what of Object.keys(expected) as Probe[]) got[what] = await probe(what, metadataOf(principal));
    expect(got).toEqual(expected);
    // The real host's session was never disturbed by the probes.
    expect(harness?.cp.connectedHosts).toBe(1);
    expect(host.state).toBe('connected');
  });

  it('a credential of the wrong kind is refused saying which kind was expected and which was presented, never echoing it', async () => {
    const h = need(harness, 'harness');
    const admin = need(rawAdmin, 'admin client');
    const detailsOf = async (promise: Promise<unknown>): Promise<string> => {
      try {
        await promise;
        return 'ok';
      } catch (err) {
        return (err as grpc.ServiceError).details;
      }
    };
    const agentToken = tokenOf('A');
    const got = {
      adminOnWhoAmI: await detailsOf(call(agentApi.whoAmI.bind(agentApi), {}, bearer(h.adminToken))),
      hostOnHeartbeat: await detailsOf(call(agentApi.heartbeat.bind(agentApi), { agentId: 'A' }, bearer(hostToken))),
      agentOnListAgents: await detailsOf(call(admin.listAgents.bind(admin), { pageSize: 0, pageToken: '', hostId: '' }, bearer(agentToken))),
      hostOnListAgents: await detailsOf(call(admin.listAgents.bind(admin), { pageSize: 0, pageToken: '', hostId: '' }, bearer(hostToken))),
      agentOnConnect: (await probeHostConnect(h.target, bearer(agentToken))).details,
      adminOnConnect: (await probeHostConnect(h.target, bearer(h.adminToken))).details,
    };
    expect(got).toEqual({
      adminOnWhoAmI: 'an agent token is expected; this is an admin token',
      hostOnHeartbeat: 'an agent token is expected; this is a host token',
      agentOnListAgents: 'an admin token is expected; this is an agent token',
      hostOnListAgents: 'an admin token is expected; this is a host token',
      agentOnConnect: 'a host token is expected; this is an agent token',
      adminOnConnect: 'a host token is expected; this is an admin token',
    });
    // A stranger's token is still just refused, and no refusal quotes a credential.
    expect(await detailsOf(call(agentApi.whoAmI.bind(agentApi), {}, bearer('not-a-token')))).toBe('token refused: malformed');
    for (const details of Object.values(got)) for (const secret of [h.adminToken, agentToken, hostToken]) expect(details).not.toContain(secret);
  });

  it('an agent token on HostService.Connect is refused without a final refusal for any host', async () => {
    const status = await probeHostConnect(need(harness, 'harness').target, bearer(tokenOf('A')));
    expect(status.code).toBe(UNAUTHENTICATED);
    expect(status.metadata.get('tether-refusal')).toEqual([]);
  });

  it('an agent token on AdminService.StopAgent is refused before it has any effect', async () => {
    const admin = need(rawAdmin, 'admin client');
    expect(await statusOf(call(admin.stopAgent.bind(admin), { agentId: 'B', reason: 'hijack' }, bearer(tokenOf('A'))))).toBe(UNAUTHENTICATED);
    expect(await statusOf(call(admin.stopAgent.bind(admin), { agentId: 'B', reason: 'hijack' }, bearer(hostToken)))).toBe(UNAUTHENTICATED);
    const h = need(harness, 'harness');
    const response = await call(h.admin.getAgent.bind(h.admin), { agentId: 'B' });
    expect(response.agent?.state).toBe(AgentState.AGENT_STATE_RUNNING);
    expect(await whoAmI(bearer(tokenOf('B')))).toBe('ok');
  });

  it('a stopped agent’s cached, unexpired token is refused at once; its neighbour is untouched', async () => {
    const h = need(harness, 'harness');
    const tokenA = tokenOf('A');
    const before = h.cp.verifierCacheEntries;
    const who = await call(agentApi.whoAmI.bind(agentApi), {}, bearer(tokenA));
    expect(who.agentId).toBe('A');
    expect(who.expiresAtMs).toBeGreaterThan(h.clock.now());
    const cachedWithA = h.cp.verifierCacheEntries;
    expect(cachedWithA).toBeGreaterThan(before);

    const stoppedOnHost = nextEvent<{ agentId: string }>(host.events, 'agent-stopped', (e) => e.agentId === 'A');
    const stopped = await call(h.admin.stopAgent.bind(h.admin), { agentId: 'A', reason: 'test' });
    expect(stopped.agent?.state).toBe(AgentState.AGENT_STATE_STOPPED);
    expect(h.cp.verifierCacheEntries).toBeLessThan(cachedWithA);

    // Same token string, well before its exp (the fake clock has not moved).
    expect(h.clock.now()).toBeLessThan(who.expiresAtMs);
    expect(await whoAmI(bearer(tokenA))).toBe(UNAUTHENTICATED);
    expect(await heartbeat('A', bearer(tokenA))).toBe(UNAUTHENTICATED);
    expect(await whoAmI(bearer(tokenOf('B')))).toBe('ok');

    // The host was told too: A's holder is revoked, so nothing on the host can still read the token.
    await stoppedOnHost;
    expect(() => captured.get('A')?.get()).toThrow();
  });

  it('a stopped agent’s old token stays refused after the agent is started again', async () => {
    const h = need(harness, 'harness');
    const oldToken = tokenOf('A');
    expect(await whoAmI(bearer(oldToken))).toBe('ok');
    const stoppedOnHost = nextEvent<{ agentId: string }>(host.events, 'agent-stopped', (e) => e.agentId === 'A');
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'A', reason: 'test' });
    await stoppedOnHost;

    const restarted = nextEvent<{ agentId: string; incarnation: number }>(host.events, 'agent-started', (e) => e.agentId === 'A');
    const ensured = await call(h.admin.ensureAgent.bind(h.admin), {
      agentId: 'A',
      name: 'A',
      hostId,
      hostLabels: [],
      spec: { kind: 'module', module: 'grab', command: '', args: [], config: '' },
      update: false,
    });
    expect(ensured.created).toBe(true);
    expect((await restarted).incarnation).toBe(2);

    const newToken = tokenOf('A');
    expect(newToken).not.toBe(oldToken);
    expect(await whoAmI(bearer(newToken))).toBe('ok');
    expect(await whoAmI(bearer(oldToken))).toBe(UNAUTHENTICATED);
    expect(await heartbeat('A', bearer(oldToken))).toBe(UNAUTHENTICATED);
  });
});

function toCode(result: grpc.status | 'ok'): grpc.status {
  return result === 'ok' ? OK : result;
}
