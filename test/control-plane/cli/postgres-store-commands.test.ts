/**
 * The control plane on a PostgreSQL store, run for real (`node bin/control-plane.js`):
 * `serve --store postgres://…` keeps what matters in the database, so a second
 * control plane with another (empty) data directory takes over after the first
 * is killed; `new-epoch` starts a new history after a pg_restore; no password
 * of a connection string is ever printed.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../../control-plane/store/postgres-store.js';
import { runControlPlaneCli } from '../../support/control-plane-cli.js';
import { ControlPlaneProcess } from '../../support/control-plane-process.js';
import { createTestSchema, isPostgresAvailable, type TestSchema } from '../../support/postgres.js';
import { host } from '../../support/store-records.js';

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

  function cli(port: number, args: string[]): ReturnType<typeof runControlPlaneCli> {
    return runControlPlaneCli(['--server', `127.0.0.1:${port}`, ...args], { PATH: process.env.PATH ?? '', TETHER_ADMIN_TOKEN: ADMIN_TOKEN });
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
