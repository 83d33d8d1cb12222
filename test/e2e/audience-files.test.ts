/**
 * Audience-token files for process agents (issue 17, Show 2): a process agent
 * dispatched with an audience file finds a valid token at the path its
 * environment names; after the refresh point the file holds a new token (read
 * twice, on the fake clock); the file is 0600, replaced by rename, never
 * half-written. Real control plane (with an issuer URL), real host, a real
 * child process that uses nothing but its environment and the file.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { refreshAtMs } from '../../agent-host/audience-file-keeper.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness, killStartedAgentProcesses, statusOf } from '../support/harness.js';
import { startHttpFront, type HttpFront } from '../support/http-front.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const NODE = process.execPath;
const FIXTURE = fileURLToPath(new URL('../support/process-agent-fixture.mjs', import.meta.url));
const AGENT_ID = 'aws-agent';
const STS = 'sts.amazonaws.com';
const AGENT_TTL_MS = 3_600_000;

interface Seen {
  text: string;
  path: string;
  mode: number;
  token: string;
}

describe('audience-token files', () => {
  let harness: Harness | undefined;
  let front: HttpFront | undefined;
  const dirs: string[] = [];

  afterEach(async () => {
    killStartedAgentProcesses(harness);
    await harness?.close();
    harness = undefined;
    await front?.close();
    front = undefined;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('keeps a fresh ES256 token for the audience at the path in the agent\'s environment, 0600, replaced by rename after its refresh point', async () => {
    front = await startHttpFront();
    harness = await Harness.start({ httpAddress: '127.0.0.1:0', issuerUrl: front.url, agentTokenTtlMs: AGENT_TTL_MS });
    const h = harness;
    front.pointAt(h.cp.httpPort);
    const agentsDir = join(mkdtempSync(join(tmpdir(), 'tether-audfile-')), 'agents');
    dirs.push(agentsDir);
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: 10_000 });
    const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === AGENT_ID);
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: AGENT_ID,
      name: AGENT_ID,
      hostId,
      hostLabels: [],
      spec: { kind: 'process', module: '', command: NODE, args: [FIXTURE, '--audience-each', '--dump-env'], config: '', audienceFiles: { files: [{ name: 'aws', audience: STS }] } },
    });
    await started;
    const agentDir = join(agentsDir, AGENT_ID);
    await waitUntil(() => existsSync(join(agentDir, 'ready')), 'the agent to be ready');
    const path = join(agentDir, 'tokens', 'aws');
    const env = JSON.parse(readFileSync(join(agentDir, 'env.json'), 'utf8')) as Record<string, string>;
    expect(env.TETHER_AUDIENCE_FILE_AWS).toBe(path);
    expect(statSync(join(agentDir, 'tokens')).mode & 0o777).toBe(0o700);

    // A relying party, from the issuer URL alone.
    const discovery = (await (await fetch(`${front.url}/.well-known/openid-configuration`)).json()) as { issuer: string; jwks_uri: string };
    const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri), { cooldownDuration: 0 });
    const verify = (token: string): Promise<unknown> => jwtVerify(token, jwks, { issuer: discovery.issuer, audience: STS, algorithms: ['ES256'], currentDate: new Date(h.clock.now()) });

    /** Sends `text`; resolves with what the agent read from the file for it. */
    const agentReads = async (text: string): Promise<Seen> => {
      await call(h.admin.sendMessages.bind(h.admin), { agentId: AGENT_ID, messages: [{ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: '' }] });
      let seen: Seen | undefined;
      await waitUntil(() => {
        if (!existsSync(join(agentDir, 'audience.json'))) return false;
        seen = (JSON.parse(readFileSync(join(agentDir, 'audience.json'), 'utf8')) as Seen[]).find((s) => s.text === text);
        return seen !== undefined;
      }, `the agent to read the file for ${text}`);
      if (seen === undefined) throw new Error('unreachable');
      return seen;
    };

    const first = await agentReads('first');
    expect(first.path).toBe(path);
    expect(first.mode).toBe(0o600);
    await expect(verify(first.token)).resolves.toBeDefined();
    const claims = decodeJwt(first.token);
    expect(claims).toMatchObject({ sub: AGENT_ID, aud: STS, host: hostId });
    // Half the agent token TTL: through an outage of a third of it (what the promise covers), with margin.
    expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(AGENT_TTL_MS / 2 / 1000);
    const inode = statSync(path).ino;

    // Before the refresh point: the same token. After it: a new one, in a new file (a rename), 0600.
    const dueMs = refreshAtMs((claims.iat ?? 0) * 1000, (claims.exp ?? 0) * 1000, AGENT_TTL_MS);
    expect(dueMs - (claims.iat ?? 0) * 1000).toBeGreaterThan(0);
    expect((claims.exp ?? 0) * 1000 - dueMs).toBeGreaterThanOrEqual(AGENT_TTL_MS / 3);
    h.clock.advance(dueMs - h.clock.now() - 1_000);
    expect((await agentReads('before')).token).toBe(first.token);
    // While the file is replaced, every read of it is a whole token of ours, 0600.
    let reads = 0;
    const reader = async (): Promise<void> => {
      while (statSync(path).ino === inode && reads < 1_000_000) {
        const content = readFileSync(path, 'utf8');
        expect(statSync(path).mode & 0o777).toBe(0o600);
        expect(content.split('.')).toHaveLength(3);
        expect(decodeJwt(content).sub).toBe(AGENT_ID);
        reads++;
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    const reading = reader();
    h.clock.advance(2_000);
    await waitUntil(() => statSync(path).ino !== inode, 'the file to be replaced');
    await reading;
    expect(reads).toBeGreaterThan(0);
    const second = await agentReads('after');
    expect(second.mode).toBe(0o600);
    expect(second.token).not.toBe(first.token);
    expect(decodeJwt(second.token).jti).not.toBe(claims.jti);
    await expect(verify(second.token)).resolves.toBeDefined();
    // The file's directory holds the file and nothing half-written beside it.
    expect(readFileSync(path, 'utf8')).toBe(second.token);

    // Stopped: the files go with the agent.
    const stopped = nextEvent<{ agentId: string }>(host.events, 'agent-stopped', (e) => e.agentId === AGENT_ID);
    await call(h.admin.stopAgent.bind(h.admin), { agentId: AGENT_ID, reason: 'test' });
    h.clock.advance(10_000);
    await stopped;
    await waitUntil(() => !existsSync(path), 'the audience file to be removed');
  });

  it('keeps the file valid through a control-plane outage of almost a third of the agent TTL starting at its refresh point', async () => {
    front = await startHttpFront();
    harness = await Harness.start({ httpAddress: '127.0.0.1:0', issuerUrl: front.url, agentTokenTtlMs: AGENT_TTL_MS });
    const h = harness;
    front.pointAt(h.cp.httpPort);
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    try {
      const agentsDir = join(mkdtempSync(join(tmpdir(), 'tether-audfile-')), 'agents');
      dirs.push(agentsDir);
      const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: 10_000, target: `127.0.0.1:${proxy.port}` });
      const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === AGENT_ID);
      await call(h.admin.dispatchAgent.bind(h.admin), {
        agentId: AGENT_ID,
        name: AGENT_ID,
        hostId,
        hostLabels: [],
        spec: { kind: 'process', module: '', command: NODE, args: [FIXTURE], config: '', audienceFiles: { files: [{ name: 'aws', audience: STS }] } },
      });
      await started;
      const path = join(agentsDir, AGENT_ID, 'tokens', 'aws');
      await waitUntil(() => existsSync(join(agentsDir, AGENT_ID, 'ready')), 'the agent to be ready');
      const first = readFileSync(path, 'utf8');
      const claims = decodeJwt(first);
      const expiresAtMs = (claims.exp ?? 0) * 1000;
      const dueMs = refreshAtMs((claims.iat ?? 0) * 1000, expiresAtMs, AGENT_TTL_MS);

      // The outage starts a second before the refresh point, and lasts a third of the TTL less a minute.
      h.clock.advance(dueMs - 1_000 - h.clock.now());
      expect(readFileSync(path, 'utf8')).toBe(first);
      const lost = nextEvent(host.events, 'disconnected');
      proxy.refuseNew();
      proxy.cutAll();
      await lost;
      const outageStartMs = h.clock.now();
      h.clock.advance(dueMs - h.clock.now());
      await waitUntil(() => h.logs.records().some((r) => r.msg === 'audience file refresh failed; retrying'), 'a refresh to fail');
      h.clock.advance(AGENT_TTL_MS / 3 - 60_000 - (h.clock.now() - outageStartMs));
      expect(readFileSync(path, 'utf8')).toBe(first);
      expect(h.clock.now()).toBeLessThan(expiresAtMs);

      // Back: the host reconnects, and the file is replaced before its token expired.
      proxy.heal();
      let isConnected = false;
      host.events.once('connected', () => {
        isConnected = true;
      });
      await advanceUntil(h.clock, 100, () => isConnected, 'the host to reconnect');
      await advanceUntil(h.clock, 1_000, () => readFileSync(path, 'utf8') !== first, 'the file to be replaced');
      expect(h.clock.now()).toBeLessThan(expiresAtMs);
      expect(h.clock.now() - outageStartMs).toBeLessThan(AGENT_TTL_MS / 3);
      expect(decodeJwt(readFileSync(path, 'utf8')).exp ?? 0).toBeGreaterThan(h.clock.now() / 1000 + AGENT_TTL_MS / 3 / 1000);
    } finally {
      await proxy.close();
    }
  });

  it('refuses a name that is a path, the host\'s own, or an audience file on a module agent', async () => {
    harness = await Harness.start();
    const h = harness;
    const dispatch = (name: string, kind = 'process'): Promise<unknown> =>
      call(h.admin.dispatchAgent.bind(h.admin), {
        agentId: `bad-${Math.random().toString(36).slice(2, 8)}`,
        name: '',
        hostId: '',
        hostLabels: [],
        spec: { kind, module: kind === 'module' ? 'idle' : '', command: kind === 'process' ? NODE : '', args: [], config: '', audienceFiles: { files: [{ name, audience: STS }] } },
      });
    for (const name of ['../x', 'a/b', '..', '.', '', 'token', '.hidden']) expect(await statusOf(dispatch(name))).toBe(grpc.status.INVALID_ARGUMENT);
    expect(await statusOf(dispatch('aws', 'module'))).toBe(grpc.status.INVALID_ARGUMENT);
  });
});
