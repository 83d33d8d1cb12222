/**
 * A control plane restored from a backup, with a real host that lived on past
 * the backup: its credential, its agent's token and the signing key that made
 * them are all newer than the backup, and its agent took messages the backup
 * never saw acknowledged (and one it never saw at all). The restored store is a
 * new epoch: the host's credential still opens its stream and the agent's
 * token still passes until both are replaced; the agent is started again and
 * given what the backup had not seen taken, in order (at least once across the
 * epoch change); a new message under a seq the old history already used is
 * delivered, not dropped as a duplicate.
 *
 * What it cannot prove: durability. Every control plane here closes cleanly or
 * dies as a process, so the OS page cache keeps what SQLite wrote, and the test
 * passes with `synchronous = OFF` too; it proves the ordering (what the host
 * was told was committed first) and the restore's new-epoch rules. Only power
 * loss tests `synchronous = FULL` (asserted at open by the store's own test).
 */
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { backupDatabase, restoreDatabase, RESTORE_GENERATION_GAP } from '../../control-plane/store/sqlite-backup.js';
import { databasePath } from '../../control-plane/store/sqlite-store.js';
import { JWKS_MAX_AGE_MS } from '../../control-plane/tokens/signing-keys.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { isPostgresTestRun } from '../support/test-store.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const AGENT_TTL_MS = 60_000;
const HOST_TTL_MS = 90_000;

/** One message as an agent instance received it. */
interface Received {
  instance: number;
  seq: number;
  payload: string;
}

async function send(harness: Harness, agentId: string, payloads: string[]): Promise<number[]> {
  const response = await call(harness.admin.sendMessages.bind(harness.admin), {
    agentId,
    messages: payloads.map((payload) => ({ payload: Buffer.from(payload, 'utf8'), contentType: 'text/plain', idempotencyKey: '' })),
  });
  return response.messages.map((m) => m.seq);
}

// `control-plane restore` is SQLite's (a file copy); on PostgreSQL it is pg_restore then `new-epoch`
// (test/control-plane/cli/postgres-store-commands.test.ts), so a PostgreSQL run skips this file.
describe.skipIf(isPostgresTestRun())('control-plane restore (a new epoch)', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await proxy?.close();
    proxy = undefined;
  });

  it('keeps the host and its agent authenticated, restarts the agent and delivers at least once and in order', async () => {
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, hostTokenTtlMs: HOST_TTL_MS });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;

    const received: Received[] = [];
    const credentials: ReadOnlyCredentials[] = [];
    const record: AgentModule = (context) => {
      credentials.push(context.credentials);
      const instance = credentials.length;
      return {
        onMessage: (message) => {
          received.push({ instance, seq: message.seq, payload: Buffer.from(message.payload).toString('utf8') });
          return Promise.resolve();
        },
      };
    };
    const { host, hostId } = await h.startHost('survivor', { target: p.target, modules: new Map([['record', record]]) });
    const unauthenticated: string[] = [];
    host.events.on('heartbeat', (e: { agentId: string; isOk: boolean; error?: Error }) => {
      if ((e.error as Partial<grpc.ServiceError> | undefined)?.code === grpc.status.UNAUTHENTICATED) unauthenticated.push(e.agentId);
    });
    const rejects: unknown[] = [];
    host.events.on('reject', (e) => rejects.push(e));
    const epochs: string[] = [];
    host.events.on('connected', (e: { epoch: string }) => epochs.push(e.epoch));
    const hostGenerations: number[] = [];
    host.events.on('host-credential', (e: { generation: number }) => hostGenerations.push(e.generation));
    await h.dispatch(host, hostId, 'mail', 'record');
    const firstEpoch = await h.store.epoch();

    // Three messages taken and acknowledged before the backup.
    await send(h, 'mail', ['m1', 'm2', 'm3']);
    await waitUntil(() => received.length === 3, 'm1..m3 taken');
    await waitUntil(async () => (await h.store.getAgent('mail'))?.ackedSeq === 3, 'm1..m3 acknowledged');

    // Two more sent while the host is cut off: in the backup, but not taken.
    const cut = nextEvent(host.events, 'disconnected');
    p.refuseNew();
    p.cutAll();
    await cut;
    expect(await send(h, 'mail', ['m4', 'm5'])).toEqual([4, 5]);
    const backupPath = join(h.dir, 'backup.db');
    const backup = backupDatabase(databasePath(h.dir), backupPath);
    expect(backup).toMatchObject({ epoch: firstEpoch, hosts: 1, agents: 1, pendingMessages: 2 });

    // Life goes on past the backup: m4, m5 and a sixth taken; a new signing key; the host's credential and the agent's token replaced.
    p.heal();
    await advanceUntil(h.clock, 50, () => host.state === 'connected', 'the host to reconnect before the restore');
    await send(h, 'mail', ['m6']);
    await waitUntil(() => received.length === 6, 'm4..m6 taken');
    // A rotation promotes the standby (in the backup as a standby), once it has been published longer than the JWKS cache lifetime.
    const standbyCreatedAtMs = h.cp.keys.list().find((key) => key.state === 'standby')?.createdAtMs ?? 0;
    await advanceUntil(h.clock, 1_000, () => h.clock.now() - standbyCreatedAtMs > JWKS_MAX_AGE_MS, 'the standby published longer than the JWKS cache lifetime');
    const { keyId: newKeyId, standbyKeyId } = await call(h.admin.rotateSigningKey.bind(h.admin), {});
    const agentRotated = nextEvent(host.events, 'rotation-applied', (e: { agentId: string }) => e.agentId === 'mail');
    await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'mail' });
    await agentRotated;
    await advanceUntil(h.clock, 1_000, () => hostGenerations.length > 0, 'the host credential rotated at a third of its life');
    const lostEraAgentToken = credentials[0]?.get() ?? '';
    expect(host.agentCredential('mail')?.generation).toBeGreaterThanOrEqual(2);
    expect(hostGenerations.at(-1)).toBeGreaterThanOrEqual(2);

    // Restore the backup into the stopped control plane's data directory.
    const down = nextEvent(host.events, 'disconnected');
    await h.stopControlPlane();
    await down;
    const restored = restoreDatabase(databasePath(h.dir), backupPath, h.clock.now());
    expect(restored.previousEpoch).toBe(firstEpoch);
    expect(restored.epoch).not.toBe(firstEpoch);
    // Kept: the standby published after the backup (verifying-only now, with no private half).
    expect(restored.signingKeysKept).toBe(1);
    expect(restored.replacedPath).toBeDefined();
    await h.startControlPlane();
    expect(await h.store.epoch()).toBe(restored.epoch);

    // Before the host is back: the agent's token from after the backup, signed by the key that was the backup's standby, still passes.
    expect(lostEraAgentToken.split('.')[0]).toBeDefined();
    const agentApi = h.agentClient();
    expect(await statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId: 'mail' }, bearer(lostEraAgentToken)))).toBe('ok');

    // The host's credential from after the backup opens its stream; the agent is started again under a new incarnation.
    const superseded = nextEvent(host.events, 'agent-stopped', (e: { agentId: string; reason: string }) => e.agentId === 'mail');
    const restarted = nextEvent(host.events, 'agent-started', (e: { agentId: string; incarnation: number }) => e.agentId === 'mail');
    p.setTarget(h.cp.port);
    await advanceUntil(h.clock, 50, () => host.state === 'connected' && epochs.at(-1) === restored.epoch, 'the host to join the new epoch');
    expect((await superseded).reason).toMatch(/superseded/);
    expect((await restarted).incarnation).toBe(2);

    // At least once and in order: what the backup had not seen taken comes again, then a new message under a reused seq.
    await waitUntil(() => received.filter((r) => r.instance === 2).length === 2, 'm4 and m5 given again');
    expect(await send(h, 'mail', ['m7'])).toEqual([6]);
    await waitUntil(() => received.filter((r) => r.instance === 2).length === 3, 'm7 taken');
    expect(received.map((r) => `${r.instance}:${r.seq}:${r.payload}`)).toEqual([
      '1:1:m1',
      '1:2:m2',
      '1:3:m3',
      '1:4:m4',
      '1:5:m5',
      '1:6:m6',
      '2:4:m4',
      '2:5:m5',
      '2:6:m7',
    ]);
    await waitUntil(async () => (await h.store.getAgent('mail'))?.ackedSeq === 6, 'everything acknowledged in the new epoch');

    // Every credential replaced: the host's and the agent's, past every generation of the old history.
    await waitUntil(() => (hostGenerations.at(-1) ?? 0) > RESTORE_GENERATION_GAP, 'a new host credential');
    expect(host.agentCredential('mail')?.generation).toBeGreaterThan(RESTORE_GENERATION_GAP);
    const newToken = credentials[1]?.get() ?? '';
    expect(await statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId: 'mail' }, bearer(newToken)))).toBe('ok');
    expect(await statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId: 'mail' }, bearer(lostEraAgentToken)))).toBe(grpc.status.UNAUTHENTICATED);
    const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId: 'mail' });
    expect(agent?.incarnation).toBe(2);
    expect(agent?.hostId).toBe(hostId);
    const keys = await call(h.admin.listSigningKeys.bind(h.admin), {});
    expect(keys.keys.map((k) => k.keyId)).toContain(newKeyId);
    expect(keys.keys.find((k) => k.keyId === standbyKeyId)?.state).toBe('verifying-only');

    // No agent saw a 401, and nothing the host sent was refused as a violation.
    expect(unauthenticated).toEqual([]);
    expect(rejects).toEqual([]);
  });
});
