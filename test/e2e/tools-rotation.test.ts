/**
 * Any grpc-js client, not only AgentClient, keeps calling as its agent across
 * rotations when given the library's interceptor (insecure loopback channel)
 * or CallCredentials (TLS channel): the token is read at each call, so every
 * call carries the generation the holder has at that moment. Rotations are
 * forced with AdminService.RotateAgentCredential; previous tokens stay valid
 * until their own expiry, so a client that cached its first token would still
 * be accepted and would report a stale generation: that is what fails here.
 */
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import { AgentClient } from '../../agent-host/tools/agent-client.js';
import { bearerInterceptor, callCredentials } from '../../agent-host/tools/call-credentials.js';
import { fromFile, fromHolder, type FileSourceStats, type ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { AgentServiceClient } from '../../gen/tether/v1/agent.js';
import { call, Harness, idleModule } from '../support/harness.js';
import { selfSignedCert } from '../support/tls-cert.js';
import { nextEvent } from '../support/wait.js';

const ROTATIONS = 20;

/** Dispatches `agentId` (idle module) through `admin` and resolves with its read-only credentials once its host started it. */
async function dispatchIdle(admin: AdminServiceClient, host: AgentHost, hostId: string, agentId: string): Promise<ReadOnlyCredentials> {
  const started = nextEvent<{ agentId: string; credentials: ReadOnlyCredentials }>(host.events, 'agent-started', (e) => e.agentId === agentId);
  await call(admin.dispatchAgent.bind(admin), {
    agentId,
    name: agentId,
    hostId,
    hostLabels: [],
    spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
  });
  return (await started).credentials;
}

/**
 * Forces `ROTATIONS` rotations of `agentId`; after each, once the host applied
 * it, calls WhoAmI through `whoAmI` and expects the holder's new generation.
 * Returns the generations and token ids the calls reported.
 */
async function rotateAndCall(
  admin: AdminServiceClient,
  host: AgentHost,
  agentId: string,
  credentials: ReadOnlyCredentials,
  whoAmI: () => Promise<{ generation: number; tokenId: string }>,
  afterApply: () => void = () => undefined,
): Promise<{ generations: number[]; tokenIds: Set<string> }> {
  const generations: number[] = [];
  const tokenIds = new Set<string>();
  for (let i = 0; i < ROTATIONS; i++) {
    const expected = credentials.generation + 1;
    const applied = nextEvent<{ agentId: string; generation: number }>(host.events, 'rotation-applied', (e) => e.agentId === agentId && e.generation === expected);
    const rotated = await call(admin.rotateAgentCredential.bind(admin), { agentId });
    expect(rotated.generation).toBe(expected);
    await applied;
    afterApply();
    const me = await whoAmI();
    expect(me.generation).toBe(credentials.generation);
    generations.push(me.generation);
    tokenIds.add(me.tokenId);
  }
  return { generations, tokenIds };
}

/** 2, 3, …, ROTATIONS + 1. */
function expectedGenerations(): number[] {
  return Array.from({ length: ROTATIONS }, (_, i) => i + 2);
}

describe('tool calls across rotations', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('a generated AgentServiceClient with bearerInterceptor on an insecure loopback channel follows 20 rotations', async () => {
    harness = await Harness.start();
    const { host, hostId } = await harness.startHost('plain');
    const credentials = await dispatchIdle(harness.admin, host, hostId, 'plain-1');
    const client = new AgentServiceClient(harness.target, grpc.credentials.createInsecure(), {
      interceptors: [bearerInterceptor(fromHolder(credentials))],
    });
    onTestFinished(() => client.close());
    const before = await call(client.whoAmI.bind(client), {});
    expect(before.generation).toBe(1);
    const clock = harness.clock;
    const { generations, tokenIds } = await rotateAndCall(harness.admin, host, 'plain-1', credentials, () => call(client.whoAmI.bind(client), {}), () =>
      // Time moves between rotations too (a second each), on the clock every part shares.
      clock.advance(1_000),
    );
    expect(generations).toEqual(expectedGenerations());
    expect(tokenIds.size).toBe(ROTATIONS);
    expect(tokenIds.has(before.tokenId)).toBe(false);
  });

  it('a generated AgentServiceClient with callCredentials on a TLS channel follows 20 rotations', async () => {
    const cert = selfSignedCert();
    harness = await Harness.start({ tls: cert });
    const h = harness;
    const tls = grpc.credentials.createSsl(cert.certPem);
    // The harness's own admin client is plaintext; this one speaks TLS.
    const admin = new AdminServiceClient(h.target, grpc.credentials.combineChannelCredentials(tls, callCredentials({ get: () => h.adminToken })));
    onTestFinished(() => admin.close());
    const enrolled = await call(admin.enrollHost.bind(admin), { name: 'tls-host', joinTtlMs: 0 });
    const host = AgentHost.start({
      target: h.target,
      clock: h.clock,
      logger: h.logs.logger,
      credentialStore: new MemoryHostCredentialStore(),
      joinToken: enrolled.joinToken,
      modules: new Map([['idle', idleModule]]),
      channelCredentials: tls,
      reconnectMinDelayMs: 10,
      reconnectMaxDelayMs: 50,
    });
    h.hosts.push(host);
    await nextEvent(host.events, 'connected');
    const credentials = await dispatchIdle(admin, host, enrolled.hostId, 'tls-1');

    // A plaintext client to the TLS port gets nowhere: the TLS path below is really TLS.
    const plaintext = new AgentServiceClient(h.target, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor(fromHolder(credentials))] });
    onTestFinished(() => plaintext.close());
    await expect(call(plaintext.whoAmI.bind(plaintext), {})).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });

    const client = new AgentServiceClient(h.target, grpc.credentials.combineChannelCredentials(tls, callCredentials(fromHolder(credentials))));
    onTestFinished(() => client.close());
    expect((await call(client.whoAmI.bind(client), {})).generation).toBe(1);
    const { generations, tokenIds } = await rotateAndCall(admin, host, 'tls-1', credentials, () => call(client.whoAmI.bind(client), {}));
    expect(generations).toEqual(expectedGenerations());
    expect(tokenIds.size).toBe(ROTATIONS);

    // A source with no token fails the call UNAUTHENTICATED, naming no token.
    const empty = new AgentServiceClient(
      h.target,
      grpc.credentials.combineChannelCredentials(tls, callCredentials({ get: () => Promise.reject(new Error('nothing here')) })),
    );
    onTestFinished(() => empty.close());
    await expect(call(empty.whoAmI.bind(empty), {})).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
  });

  it('an AgentClient on fromFile follows a token file replaced by rename, reading it once per rotation', async () => {
    harness = await Harness.start();
    const { host, hostId } = await harness.startHost('file');
    const credentials = await dispatchIdle(harness.admin, host, hostId, 'file-1');
    const dir = mkdtempSync(join(tmpdir(), 'tether-token-file-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'token');
    // What the host does for a process agent: write beside (0600 from the start), then rename.
    const writeToken = (): void => {
      writeFileSync(`${path}.next`, credentials.get(), { mode: 0o600 });
      renameSync(`${path}.next`, path);
    };
    writeToken();
    const stats: FileSourceStats = { reads: 0 };
    const client = new AgentClient({ target: harness.target, source: fromFile(path, stats) });
    onTestFinished(() => client.close());
    expect((await client.whoAmI()).generation).toBe(1);
    for (let generation = 2; generation <= 4; generation++) {
      const applied = nextEvent<{ agentId: string; generation: number }>(host.events, 'rotation-applied', (e) => e.agentId === 'file-1' && e.generation === generation);
      await call(harness.admin.rotateAgentCredential.bind(harness.admin), { agentId: 'file-1' });
      await applied;
      writeToken();
      expect((await client.whoAmI()).generation).toBe(generation);
      expect((await client.whoAmI()).generation).toBe(generation);
    }
    expect(stats.reads).toBe(4);
  });
});
