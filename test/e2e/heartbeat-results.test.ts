/**
 * Show 6 of issue 13: every label of `tether_host_heartbeats_total` is
 * produced by a real heartbeat that ends that way, through the host's own
 * heartbeat loop and AgentClient (so through the typed errors the client
 * makes), against real servers on 127.0.0.1:0: a valid token (ok), a forged
 * and an expired one (unauthenticated), another agent's id (permission_denied),
 * a server that was stopped (unavailable), a server without AgentService
 * (error). Before the fix every failure here was labelled `error`.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { runHeartbeats } from '../../agent-host/heartbeat.js';
import { heartbeatResult, type HeartbeatResult } from '../../agent-host/heartbeat-result.js';
import { AgentClient } from '../../agent-host/tools/agent-client.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { FakeClock } from '../support/fake-clock.js';
import { Harness } from '../support/harness.js';
import { waitUntil } from '../support/wait.js';

const AGENT_TTL_MS = 60_000;
const CLOCK_TOLERANCE_MS = 5_000;

/** A gRPC server on 127.0.0.1:0 that serves nothing: every call is UNIMPLEMENTED. */
async function bareServer(): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server();
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, bound) => (err === null ? resolve(bound) : reject(err)));
  });
  return { server, port };
}

/**
 * One beat of the host's heartbeat loop (`runHeartbeats`, on a clock of its
 * own so the control plane's time stays put), as `agentId` with `token`
 * against `target`; resolves with the label the host's metric would count.
 */
async function beat(target: string, agentId: string, token: () => string): Promise<HeartbeatResult> {
  const client = new AgentClient({ target, source: { get: token }, deadlineMs: 10_000 });
  const clock = new FakeClock();
  const stop = new AbortController();
  const results: HeartbeatResult[] = [];
  const loop = runHeartbeats({
    agentId,
    client,
    clock,
    intervalMs: () => 1_000,
    signal: stop.signal,
    onBeat: (result) => results.push(heartbeatResult(result)),
  });
  try {
    await waitUntil(() => clock.pendingTimers > 0, 'the heartbeat loop to wait for its first beat');
    clock.advance(1_000);
    await waitUntil(() => results.length > 0, `a heartbeat of ${agentId} to finish`);
  } finally {
    stop.abort();
    await loop;
    client.close();
  }
  expect(results).toHaveLength(1);
  return results[0] as HeartbeatResult;
}

describe('heartbeat result labels, each from a real call', () => {
  let harness: Harness | undefined;
  const servers: grpc.Server[] = [];
  afterEach(async () => {
    for (const server of servers.splice(0)) server.forceShutdown();
    await harness?.close();
    harness = undefined;
  });

  it('labels ok, unauthenticated, permission_denied, unavailable and error as the calls end', async () => {
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, clockToleranceMs: CLOCK_TOLERANCE_MS, isRotationEnabled: false });
    const h = harness;
    const credentials = new Map<string, ReadOnlyCredentials>();
    const grab: AgentModule = (context) => {
      credentials.set(context.agentId, context.credentials);
      return {};
    };
    const { host, hostId } = await h.startHost('labelled', { modules: new Map([['grab', grab]]) });
    for (const agentId of ['beat-a', 'beat-b']) await h.dispatch(host, hostId, agentId, 'grab');
    const source = credentials.get('beat-a');
    if (source === undefined) throw new Error('no credentials for beat-a');
    const tokenA = source.get();

    // ok: the agent's own token, its own id.
    expect(await beat(h.target, 'beat-a', () => tokenA)).toBe('ok');

    // permission_denied: a valid token naming another agent.
    expect(await beat(h.target, 'beat-b', () => tokenA)).toBe('permission_denied');

    // unauthenticated: a forged token (the signature of a real one, altered).
    const [header, payload, signature = ''] = tokenA.split('.');
    const forged = `${header}.${payload}.${signature.startsWith('A') ? 'B' : 'A'}${signature.slice(1)}`;
    expect(await beat(h.target, 'beat-a', () => forged)).toBe('unauthenticated');

    // error: a real gRPC server that has no AgentService (UNIMPLEMENTED).
    const bare = await bareServer();
    servers.push(bare.server);
    expect(await beat(`127.0.0.1:${bare.port}`, 'beat-a', () => tokenA)).toBe('error');

    // unavailable: a server that was listening and is stopped.
    const stopped = await bareServer();
    await new Promise<void>((resolve) => stopped.server.tryShutdown(() => resolve()));
    expect(await beat(`127.0.0.1:${stopped.port}`, 'beat-a', () => tokenA)).toBe('unavailable');

    // unauthenticated: the agent's real token, once past its expiry and the clock tolerance.
    h.clock.advance(AGENT_TTL_MS + CLOCK_TOLERANCE_MS + 1_000);
    expect(await beat(h.target, 'beat-a', () => tokenA)).toBe('unauthenticated');
  });
});
