/**
 * Several control-plane addresses (`--server a:7443,b:7443`), on real servers:
 * a host given a dead address and a live one connects without waiting a
 * backoff; a host whose control plane is shut down finds the next one started
 * on the same data directory (in sequence: two control planes never share a
 * SQLite file) at its other address and resumes there: no agent restarted, no
 * UNAUTHENTICATED; the agents' calls follow it. The admin CLI and the tool
 * library take the same lists.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../../agent-host/tools/agent-client.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { advanceUntil } from '../support/advance-until.js';
import { runControlPlaneCli, RunningBinary } from '../support/control-plane-cli.js';
import { ControlPlaneProcess } from '../support/control-plane-process.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

/** Nothing listens on port 1 of loopback: a connection there is refused at once. */
const DEAD = '127.0.0.1:1';
/** A draw that keeps a two-address list in the order given (the shuffle swaps only for a draw under 0.5). */
const KEEP_ORDER = (): number => 0.9;

describe('several control-plane addresses', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;
  afterEach(async () => {
    await harness?.close();
    await proxy?.close();
    harness = undefined;
    proxy = undefined;
  });

  it('a host given a dead address first connects to the live one at once, without a backoff', async () => {
    const h = await Harness.start();
    harness = h;
    const streams: string[] = [];
    const startedAtMs = h.clock.now();
    // The fake clock never moves in this test: a host that waited any backoff would never connect (and the test would hang).
    const { host } = await h.startHost('two-addresses', {
      target: `${DEAD},${h.target}`,
      random: KEEP_ORDER,
      channelFactory: (target, credentials, options, purpose) => {
        if (purpose === 'stream') streams.push(target);
        return new grpc.Channel(target, credentials, options);
      },
    });
    expect(host.state).toBe('connected');
    expect(streams).toEqual([DEAD, h.target]);
    expect(h.clock.now()).toBe(startedAtMs);
  });

  it('a host whose control plane is shut down resumes on the next one, started on the same data directory at its other address', async () => {
    const h = await Harness.start({ heartbeatIntervalMs: 3_000 });
    harness = h;
    // The second address: a loopback proxy, pointed at the first control plane until the second one exists.
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const { host, hostId } = await h.startHost('mover', { target: `${h.target},${proxy.target}`, random: KEEP_ORDER });
    const started: string[] = [];
    const ended: string[] = [];
    const codes: number[] = [];
    const refusals: string[] = [];
    host.events.on('agent-started', (e) => started.push(e.agentId));
    host.events.on('agent-ended', (e) => ended.push(e.agentId));
    host.events.on('agent-stopped', (e) => ended.push(e.agentId));
    host.events.on('disconnected', (e) => codes.push(e.code));
    host.events.on('refused', (e) => refusals.push(e.refusal));
    const agentIds = ['move-1', 'move-2', 'move-3'];
    for (const agentId of agentIds) await h.dispatch(host, hostId, agentId);
    expect(host.state).toBe('connected');
    expect(proxy.acceptedConnections).toBe(0);

    await h.stopControlPlane();
    await advanceUntil(h.clock, 10, () => host.state === 'connecting', 'the host to see its control plane gone');
    await h.startControlPlane();
    proxy.setTarget(h.cp.port);
    const connected = nextEvent(host.events, 'connected');
    await advanceUntil(h.clock, 10, () => host.state === 'connected', 'the host to resume on the second control plane');
    await connected;
    expect(proxy.openConnections).toBeGreaterThan(0);

    // No agent was restarted or stopped, nothing was refused, no UNAUTHENTICATED on the way.
    expect(started).toEqual(agentIds);
    expect(ended).toEqual([]);
    expect(refusals).toEqual([]);
    expect(codes.length).toBeGreaterThan(0);
    expect(codes).not.toContain(grpc.status.UNAUTHENTICATED);
    const described = await call(h.admin.listAgents.bind(h.admin), { pageSize: 0, pageToken: '', hostId: '' });
    expect(described.agents.map((a) => [a.agentId, a.incarnation]).sort()).toEqual(agentIds.map((id) => [id, 1]));

    // The agents' own calls (heartbeats) follow the stream to the second control plane.
    let isBeatOk = false;
    host.events.on('heartbeat', (e) => (isBeatOk ||= e.agentId === 'move-1' && e.isOk));
    await advanceUntil(h.clock, 1_000, () => isBeatOk, 'a heartbeat through the second control plane');
  });

  it('the tool library takes a list: with a dead address first, the next call goes to the live one', async () => {
    const h = await Harness.start();
    harness = h;
    const { host, hostId } = await h.startHost('tools');
    const agentStarted = nextEvent<{ agentId: string; credentials: ReadOnlyCredentials }>(host.events, 'agent-started', (e) => e.agentId === 'tool-1');
    await h.dispatch(host, hostId, 'tool-1');
    const { credentials } = await agentStarted;
    const failures: string[] = [];
    let whoAmI: { agentId: string } | undefined;
    // Whatever order the shuffle picks, one address is dead: at most one call fails (UNAVAILABLE) before one succeeds.
    for (let attempt = 0; attempt < 3 && whoAmI === undefined; attempt++) {
      const client = new AgentClient({ target: `${DEAD},${h.target}`, source: credentials });
      try {
        for (let call = 0; call < 2 && whoAmI === undefined; call++) {
          try {
            whoAmI = await client.whoAmI();
          } catch (err) {
            failures.push((err as Error).name);
          }
        }
      } finally {
        client.close();
      }
    }
    expect(whoAmI?.agentId).toBe('tool-1');
    expect(failures.every((name) => name === 'UnavailableError')).toBe(true);
    expect(() => new AgentClient({ target: `${h.target},`, source: credentials })).toThrow('address 2 of 2 is empty');
  });

  it('control-plane agents ls --server dead,live works, in either order; dead,dead says which it tried', async () => {
    const h = await Harness.start();
    harness = h;
    const env = { PATH: process.env.PATH ?? '', TETHER_ADMIN_TOKEN: h.adminToken };
    for (const server of [`${DEAD},${h.target}`, `${h.target},${DEAD}`]) {
      const run = await runControlPlaneCli(['agents', 'ls', '--server', server, '-o', 'json'], env);
      expect(run.stderr).toBe('');
      expect(run.status).toBe(0);
      expect(JSON.parse(run.stdout)).toEqual([]);
    }
    const dead = await runControlPlaneCli(['agents', 'ls', '--server', `${DEAD},127.0.0.1:2`], env);
    expect(dead.status).toBe(1);
    expect(dead.stderr).toBe(`error: cannot reach the control plane at ${DEAD},127.0.0.1:2 (is it running? check --server / TETHER_SERVER, and --ca-file for TLS)\n`);
  });
});

describe('several control-plane addresses, real binaries', () => {
  const cleanups: (() => unknown)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  it('an agent-host given both addresses resumes on a control plane started after the first was stopped, on the same data directory: no agent restarted, no UNAUTHENTICATED', async () => {
    const root = mkdtempSync(join(tmpdir(), 'tether-move-'));
    cleanups.push(() => rmSync(root, { recursive: true, force: true }));
    const dataDir = join(root, 'cp');
    const adminToken = 'move-admin-token-0123456789abcdefghij';
    const first = await ControlPlaneProcess.start({ dataDir, adminToken });
    cleanups.push(() => first.stop());
    // The second address, pointed at the first control plane until the second one exists.
    const proxy = await FaultProxy.start({ targetPort: first.port });
    cleanups.push(() => proxy.close());
    const admin = (port: number): NodeJS.ProcessEnv => ({ PATH: process.env.PATH ?? '', TETHER_ADMIN_TOKEN: adminToken, TETHER_SERVER: `127.0.0.1:${String(port)}` });
    const enrolled = await runControlPlaneCli(['hosts', 'enroll', 'mover'], admin(first.port));
    expect(enrolled.status, enrolled.stderr).toBe(0);
    const host = RunningBinary.start('agent-host', ['--server', `127.0.0.1:${String(first.port)},${proxy.target}`], {
      PATH: process.env.PATH ?? '',
      TETHER_HOST_DATA_DIR: join(root, 'host'),
      TETHER_JOIN_TOKEN: enrolled.stdout.trim(),
    });
    cleanups.push(() => host.stop());
    await host.waitForOutput('connected to control plane', 'the host to join');
    const dispatched = await runControlPlaneCli(['agents', 'dispatch', '--id', 'mover-1', '--module', 'idle', '-o', 'json'], admin(first.port));
    expect(dispatched.status, dispatched.stderr).toBe(0);
    const running = async (port: number): Promise<{ agentId: string; state: string; incarnation: number; restarts: number }[]> => {
      const listed = await runControlPlaneCli(['agents', 'ls', '-o', 'json'], admin(port));
      return listed.status === 0 ? (JSON.parse(listed.stdout) as { agentId: string; state: string; incarnation: number; restarts: number }[]) : [];
    };
    await waitUntil(async () => (await running(first.port)).some((a) => a.state === 'running'), 'the agent running');
    const connectionsBefore = host.stdout.split('connected to control plane').length;

    expect((await first.stop()).code).toBe(0);
    const second = await ControlPlaneProcess.start({ dataDir, adminToken });
    cleanups.push(() => second.stop());
    proxy.setTarget(second.port);
    await waitUntil(() => host.stdout.split('connected to control plane').length > connectionsBefore, 'the host to resume on the second control plane');

    const agents = await running(second.port);
    expect(agents.map((a) => [a.agentId, a.state, a.incarnation, a.restarts])).toEqual([['mover-1', 'running', 1, 0]]);
    const lines = host.stdout.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.filter((l) => l.msg === 'agent started').map((l) => l.agentId)).toEqual(['mover-1']);
    expect(lines.filter((l) => l.code === grpc.status.UNAUTHENTICATED)).toEqual([]);
    expect(lines.some((l) => l.msg === 'stream lost; reconnecting')).toBe(true);
  });
});
