/**
 * When a host gives up: only on a final refusal (its credential revoked,
 * expired for good, or its host unknown), carried in the `tether-refusal`
 * trailer. A passing UNAUTHENTICATED (a control plane that does not know the
 * key yet, or whose clock is behind) is retried, and the host keeps its agents.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import type { AgentState } from '../../gen/tether/v1/common.js';
import { advanceUntil } from '../support/advance-until.js';
import { withinHangBound } from '../support/control-plane-process.js';
import { FakeClock } from '../support/fake-clock.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { bearer, call, Harness } from '../support/harness.js';
import { probeHostConnect } from '../support/host-stream-probe.js';
import { assertNoSecrets } from '../support/secrets.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const ROOT = join(import.meta.dirname, '..', '..');

describe('host exit policy', () => {
  const harnesses: Harness[] = [];
  const proxies: FaultProxy[] = [];
  const children: ChildProcess[] = [];
  const dirs: string[] = [];

  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGKILL');
        await withinHangBound(exited, 'the agent-host child to exit');
      }
    }
    // Hosts first (they belong to the first harness), then the other control planes.
    for (const harness of harnesses.splice(0)) await harness.close();
    for (const proxy of proxies.splice(0)) await proxy.close();
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  async function startHarness(options: Parameters<typeof Harness.start>[0] = {}): Promise<Harness> {
    const harness = await Harness.start(options);
    harnesses.push(harness);
    return harness;
  }

  async function startProxy(targetPort: number): Promise<FaultProxy> {
    const proxy = await FaultProxy.start({ targetPort });
    proxies.push(proxy);
    return proxy;
  }

  async function agentInfo(h: Harness, agentId: string): Promise<{ state: AgentState; incarnation: number; hostId: string }> {
    const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId });
    if (agent === undefined) throw new Error(`no agent ${agentId}`);
    return agent;
  }

  it('exits on RevokeHost: done resolves with the refusal, its agents stop there and move elsewhere', async () => {
    const h = await startHarness();
    const credentialStore = new MemoryHostCredentialStore();
    const { host, hostId } = await h.startHost('doomed', { credentialStore });
    const { host: other, hostId: otherId } = await h.startHost('spare');
    // Placed on the doomed host by name; after the revocation they may go anywhere.
    for (const agentId of ['ev-1', 'ev-2']) await h.dispatch(host, hostId, agentId);
    const stopped: { agentId: string; reason: string }[] = [];
    host.events.on('agent-stopped', (e) => stopped.push(e));
    const restarted = new Map<string, number>();
    other.events.on('agent-started', (e) => restarted.set(e.agentId, e.incarnation));
    const held = await credentialStore.load();
    if (held === undefined) throw new Error('the host stored no credential');

    const response = await call(h.admin.revokeHost.bind(h.admin), { hostId });
    expect(response.agentsMoved).toBe(2);
    expect(await withinHangBound(host.done, 'the revoked host to exit')).toMatchObject({ refusal: 'revoked' });
    expect(host.state).toBe('refused');
    expect(host.agentIds()).toEqual([]);
    expect(stopped.map((e) => e.agentId).sort()).toEqual(['ev-1', 'ev-2']);

    // Its credential is refused for good from now on, so a copy of it exits too.
    const status = await probeHostConnect(h.target, bearer(held.token));
    expect(status.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(status.metadata.get('tether-refusal')).toEqual(['revoked']);

    // Its agents run on the spare host under a new incarnation (the old one is fenced).
    await waitUntil(() => restarted.size === 2, 'both agents started on the spare host');
    for (const agentId of ['ev-1', 'ev-2']) {
      const placed = await agentInfo(h, agentId);
      expect(placed.hostId).toBe(otherId);
      expect(placed.incarnation).toBeGreaterThan(1);
      expect(restarted.get(agentId)).toBe(placed.incarnation);
    }
  });

  it('the agent-host binary serves its metrics, and exits non-zero with a clear message when revoked', async () => {
    const h = await startHarness();
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'binary', joinTtlMs: 0 });
    const dataDir = mkdtempSync(join(tmpdir(), 'tether-host-bin-'));
    dirs.push(dataDir);
    const connected = nextEvent<{ hostId: string }>(h.cp.events, 'host-connected', (e) => e.hostId === enrolled.hostId);
    const child = spawn(process.execPath, ['bin/agent-host.js', '--server', h.target, '--data-dir', dataDir, '--metrics-listen', '127.0.0.1:0'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', TETHER_JOIN_TOKEN: enrolled.joinToken, TETHER_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    const output = { stdout: '', stderr: '' };
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (output.stdout += chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (output.stderr += chunk));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    await connected;
    // The credential it joined with is on disk, 0600; it is acknowledged (the join token burnt) before we revoke.
    await waitUntil(async () => {
      const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: 0, pageToken: '' });
      return listed.hosts.find((x) => x.hostId === enrolled.hostId)?.state === 'active';
    }, 'the binary host to acknowledge its credential');
    expect(statSync(join(dataDir, 'host-credential.json')).mode & 0o777).toBe(0o600);
    // --metrics-listen: the port it bound is in its log; the scrape says it is connected.
    const metricsPort = (): number | undefined =>
      output.stdout
        .split('\n')
        .filter((line) => line.startsWith('{') && line.endsWith('}'))
        .map((line) => JSON.parse(line) as { msg?: string; port?: number })
        .find((record) => record.msg === 'metrics serving at /metrics')?.port;
    await waitUntil(() => metricsPort() !== undefined, 'the metrics port in the log');
    const scraped = await (await fetch(`http://127.0.0.1:${metricsPort() ?? 0}/metrics`)).text();
    expect(scraped).toMatch(/^tether_host_connected 1$/m);
    assertNoSecrets(scraped, [enrolled.joinToken, h.adminToken], 'the agent-host metrics');

    await call(h.admin.revokeHost.bind(h.admin), { hostId: enrolled.hostId });
    const exit = await withinHangBound(exited, 'the revoked agent-host binary to exit');
    expect(exit.signal).toBeNull();
    expect(exit.code).not.toBe(0);
    expect(output.stderr).toMatch(/refused this host for good \(revoked\)/);
    assertNoSecrets(output.stdout + output.stderr, [enrolled.joinToken, h.adminToken], 'the agent-host output');
  });

  describe('keeps retrying, and keeps its agents, on a passing UNAUTHENTICATED', () => {
    /**
     * Starts a host (through a proxy) on the "right" control plane with two agents,
     * swaps in `wrong()` behind the proxy, checks the host is refused without a
     * final refusal several times over and keeps everything, then brings the right
     * control plane back and checks the host resumes.
     */
    async function refusedThenRecovered(wrong: (right: Harness) => Promise<Harness>, why: RegExp): Promise<void> {
      const right = await startHarness();
      const proxy = await startProxy(right.cp.port);
      const credentials = new Map<string, ReadOnlyCredentials>();
      const grab: AgentModule = (context) => {
        credentials.set(context.agentId, context.credentials);
        return {};
      };
      const { host, hostId } = await right.startHost('patient', { target: proxy.target, modules: new Map([['grab', grab]]) });
      for (const agentId of ['pa-1', 'pa-2']) await right.dispatch(host, hostId, agentId, 'grab');
      const tokensBefore = [...credentials.values()].map((source) => source.get());
      const stopped: string[] = [];
      host.events.on('agent-stopped', (e) => stopped.push(e.agentId));
      const refused: unknown[] = [];
      host.events.on('refused', (e) => refused.push(e));
      let hasExited = false;
      host.done.then(
        () => (hasExited = true),
        () => (hasExited = true),
      );
      const unauthenticated: string[] = [];
      host.events.on('disconnected', (e) => {
        // The event carries the numeric status code.
        if (e.code === (grpc.status.UNAUTHENTICATED as number)) unauthenticated.push(e.details);
      });

      const lost = nextEvent(host.events, 'disconnected');
      await right.stopControlPlane();
      await lost;
      const impostor = await wrong(right);
      proxy.setTarget(impostor.cp.port);
      await advanceUntil(right.clock, 50, () => unauthenticated.length >= 3, 'three passing refusals');

      // Refused, and not for good: still trying, agents and their tokens kept.
      expect(refused).toEqual([]);
      expect(hasExited).toBe(false);
      expect(host.state).toBe('connecting');
      for (const details of unauthenticated) expect(details).toMatch(why);
      expect(host.agentIds().sort()).toEqual(['pa-1', 'pa-2']);
      expect([...credentials.values()].map((source) => source.get())).toEqual(tokensBefore);
      expect(stopped).toEqual([]);
      expect(impostor.cp.connectedHosts).toBe(0);

      // The right control plane is back: the host resumes, same agents, same incarnation.
      await impostor.stopControlPlane();
      await right.startControlPlane();
      proxy.setTarget(right.cp.port);
      await advanceUntil(right.clock, 50, () => host.state === 'connected' && right.cp.connectedHosts === 1, 'the host to reconnect');
      expect(host.agentIds().sort()).toEqual(['pa-1', 'pa-2']);
      for (const agentId of ['pa-1', 'pa-2']) expect(await agentInfo(right, agentId)).toMatchObject({ hostId, incarnation: 1 });
      expect(stopped).toEqual([]);
      expect(hasExited).toBe(false);
      await host.close();
      expect(await host.done).toEqual({});
    }

    it('from a control plane on a fresh data directory (its keys do not include the host token\'s kid)', async () => {
      await refusedThenRecovered(async (right) => {
        // Another store, other keys; the same time.
        const impostor = await startHarness({ clock: right.clock });
        return impostor;
      }, /unknown-key/);
    });

    it('from a control plane whose clock is behind the host token\'s nbf', async () => {
      await refusedThenRecovered(async (right) => {
        // The same data directory (the same keys), read by a control plane whose clock is an hour behind.
        const behind = new FakeClock(right.clock.now() - 3_600_000);
        return startHarness({ clock: behind, dataDir: right.dir, storeLocation: right.storeLocation });
      }, /claims/);
    });
  });
});
