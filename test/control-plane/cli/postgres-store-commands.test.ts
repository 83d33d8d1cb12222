/**
 * The control plane on a PostgreSQL store, run for real (`node bin/control-plane.js`):
 * `serve --store postgres://…` keeps what matters in the database, so a second
 * control plane with another (empty) data directory takes over after the first
 * is killed; admin tokens, the audit log and events live there too, so two
 * control planes serving at once see each other's; `new-epoch` starts a new
 * history after a pg_restore; no password of a connection string is ever printed.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EXIT } from '../../../common/cli.js';
import { PostgresStore } from '../../../control-plane/store/postgres-store.js';
import { runControlPlaneCli } from '../../support/control-plane-cli.js';
import { ControlPlaneProcess } from '../../support/control-plane-process.js';
import { adminQuery, createTestSchema, isPostgresAvailable, type TestSchema } from '../../support/postgres.js';
import { host } from '../../support/store-records.js';
import { waitUntil } from '../../support/wait.js';

const isAvailable = await isPostgresAvailable('the control plane on PostgreSQL (CLI)');
const ADMIN_TOKEN = 'pg-store-admin-token-0123456789abcdef';

describe.runIf(isAvailable)('control-plane on a PostgreSQL store', () => {
  let schema: TestSchema;
  let root: string;
  let processes: ControlPlaneProcess[];

  beforeEach(async () => {
    schema = await createTestSchema();
    root = mkdtempSync(join(tmpdir(), 'tether-pg-cli-'));
    processes = [];
  });

  afterEach(async () => {
    for (const p of processes) await p.stop();
    await schema.drop();
    rmSync(root, { recursive: true, force: true });
  });

  async function serve(dataDir: string): Promise<ControlPlaneProcess> {
    const p = await ControlPlaneProcess.start({ dataDir, adminToken: ADMIN_TOKEN, env: { TETHER_STORE: schema.url } });
    processes.push(p);
    return p;
  }

  function cli(port: number, args: string[], adminToken = ADMIN_TOKEN): ReturnType<typeof runControlPlaneCli> {
    return runControlPlaneCli(['--server', `127.0.0.1:${port}`, ...args], { PATH: process.env.PATH ?? '', TETHER_ADMIN_TOKEN: adminToken });
  }

  it('moves: a second control plane with an empty data directory and the same store finds what the first (killed) one wrote', async () => {
    const first = await serve(join(root, 'a'));
    const enrolled = await cli(first.port, ['hosts', 'enroll', 'moved-host']);
    expect(enrolled.status, enrolled.stderr).toBe(0);
    const keysBefore = await cli(first.port, ['keys', 'ls', '-o', 'json']);
    expect(keysBefore.status, keysBefore.stderr).toBe(0);
    first.crash();
    await first.exited;

    const second = await serve(join(root, 'b'));
    const hosts = await cli(second.port, ['hosts', 'ls']);
    expect(hosts.status, hosts.stderr).toBe(0);
    expect(hosts.stdout).toContain('moved-host');
    // The same signing keys: tokens the first one issued still verify on the second.
    expect((await cli(second.port, ['keys', 'ls', '-o', 'json'])).stdout).toBe(keysBefore.stdout);
    // Nothing of the store in the data directory (the admin token came from the environment).
    expect(readdirSync(join(root, 'b'))).toEqual([]);
  });

  it('shares admin tokens, the audit log and events between two control planes serving at once', async () => {
    const [first, second] = await Promise.all([serve(join(root, 'a')), serve(join(root, 'b'))]);
    for (const p of [first, second]) expect(p.outputText()).not.toContain('the store keeps no events');

    // A token added on the first is accepted by the second...
    const added = await cli(first.port, ['tokens', 'add', '--role', 'viewer', '--name', 'shared']);
    expect(added.status, added.stderr).toBe(EXIT.ok);
    const token = added.stdout.trim();
    const tokenId = /^tadm_([0-9a-f]{16})\./.exec(token)?.[1] ?? '';
    const before = await cli(second.port, ['agents', 'ls'], token);
    expect(before.status, before.stderr).toBe(EXIT.ok);
    // ...and refused there as soon as the first retires it.
    const retired = await cli(first.port, ['tokens', 'retire', tokenId]);
    expect(retired.status, retired.stderr).toBe(EXIT.ok);
    const after = await cli(second.port, ['agents', 'ls'], token);
    expect(after.status).toBe(EXIT.refused);
    expect(after.stderr).toContain(`admin token ${tokenId} is retired`);

    // An event the first records (a key revoked) is watched on the second, once in the store.
    const keys = await cli(first.port, ['keys', 'ls', '-o', 'json']);
    expect(keys.status, keys.stderr).toBe(EXIT.ok);
    const standby = (JSON.parse(keys.stdout) as { keyId: string; state: string }[]).find((k) => k.state === 'standby')?.keyId ?? '';
    const revoked = await cli(first.port, ['keys', 'revoke', standby]);
    expect(revoked.status, revoked.stderr).toBe(EXIT.ok);
    const stored = async (): Promise<string[]> =>
      (await adminQuery<{ key_id: string }>(`SELECT key_id FROM ${schema.name}.events WHERE kind = 'key.revoked' ORDER BY id`)).map((r) => r.key_id);
    // The first writes its events a turn after it answered: wait until it is committed.
    await waitUntil(async () => (await stored()).includes(standby), "the first's key.revoked event in the store");
    const watched = await cli(second.port, ['watch', '--kind', 'key.revoked', '--after-id', '0', '--count', '1', '-o', 'jsonl']);
    expect(watched.status, watched.stderr).toBe(EXIT.ok);
    expect(JSON.parse(watched.stdout)).toMatchObject({ kind: 'key.revoked', keyId: standby });

    // The second's audit log shows the first's calls (and the refused one made on the second).
    const audit = await cli(second.port, ['audit', '-o', 'json']);
    expect(audit.status, audit.stderr).toBe(EXIT.ok);
    const records = JSON.parse(audit.stdout) as { tokenId: string; method: string; status: string; targets: { kind: string; id: string }[] }[];
    expect(records.filter((r) => r.tokenId === 'bootstrap').map((r) => r.method)).toEqual(
      expect.arrayContaining(['AddAdminToken', 'RetireAdminToken', 'RevokeSigningKey']),
    );
    expect(records.find((r) => r.method === 'RetireAdminToken')?.targets).toEqual([{ kind: 'token', id: tokenId }]);
    expect(records.filter((r) => r.tokenId === tokenId).map((r) => [r.method, r.status])).toEqual([['ListAgents', 'OK']]);
  });

  it('new-epoch starts a new history on the store and prints what it did', async () => {
    const store = await PostgresStore.open(schema.url, { poolSize: 1 });
    await store.insertHost(host('h1'));
    const before = await store.epoch();
    await store.close();
    const run = await runControlPlaneCli(['new-epoch', '--store', schema.url], { PATH: process.env.PATH ?? '' });
    expect(run.status, run.stderr).toBe(0);
    const reopened = await PostgresStore.open(schema.url, { poolSize: 1 });
    try {
      const after = await reopened.epoch();
      expect(after).not.toBe(before);
      expect(run.stdout).toContain(`epoch ${before} -> ${after}`);
      expect(run.stdout).toContain('burnt 1 unused join tokens');
    } finally {
      await reopened.close();
    }
  });

  it.each([
    ['new-epoch', (url: string) => ['new-epoch', '--store', url]],
    ['serve', (url: string) => ['serve', '--store', url, '--listen', '127.0.0.1:0', '--http-listen', '']],
  ])('%s never prints the password of an unreachable store', async (_name, args) => {
    const run = await runControlPlaneCli(['--data-dir', join(root, 'c'), ...args('postgres://tether:hunter2-pw@127.0.0.1:1/tether')], {
      PATH: process.env.PATH ?? '',
      TETHER_ADMIN_TOKEN: ADMIN_TOKEN,
    });
    expect(run.status).not.toBe(0);
    expect(`${run.stdout}${run.stderr}`).toContain('postgres://tether:***@127.0.0.1:1/tether');
    expect(`${run.stdout}${run.stderr}`).not.toContain('hunter2');
  });
});
