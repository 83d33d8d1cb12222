/**
 * `control-plane backup` and `control-plane restore`, run for real (`node
 * bin/control-plane.js ...`) on a data directory: what they print, and that a
 * restore refuses to run under a serving control plane.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { pidFilePath } from '../../../control-plane/store/sqlite-backup.js';
import { runControlPlaneCli, type CliRun } from '../../support/control-plane-cli.js';
import { ControlPlaneProcess } from '../../support/control-plane-process.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { agent, host } from '../../support/store-records.js';

/** Runs `control-plane --data-dir <dir> <args>` with nothing inherited but PATH. */
function cli(dataDir: string, args: string[]): Promise<CliRun> {
  return runControlPlaneCli(['--data-dir', dataDir, ...args], { PATH: process.env.PATH ?? '' });
}

describe('control-plane backup / restore', () => {
  let dir: string;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-backup-cli-'));
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('serve claims its data directory while it runs; restore waits for it to stop; a second serve is warned and leaves the claim', async () => {
    const dataDir = join(dir, 'data');
    const dbPath = join(dataDir, 'tether.db');
    const backupPath = join(dir, 'live-backup.db');
    const adminToken = 'admin-token-for-this-test-only-0123456789';
    const serving = await ControlPlaneProcess.start({ dataDir, adminToken });
    let second: ControlPlaneProcess | undefined;
    try {
      expect(readFileSync(pidFilePath(dbPath), 'utf8').trim()).toBe(String(serving.pid));
      // A backup while it serves is fine; a restore is refused, naming it.
      expect((await cli(dataDir, ['backup', '--out', backupPath])).status).toBe(0);
      const refused = await cli(dataDir, ['restore', '--from', backupPath]);
      expect(refused.status).toBe(1);
      expect(refused.stderr).toContain(`a control plane (pid ${serving.pid}) serves ${dbPath}: stop it first`);
      // A second control plane on the same directory starts (a stale claim must not lock anyone out) but says so.
      second = await ControlPlaneProcess.start({ dataDir, adminToken });
      expect(second.stdoutLines().some((line) => line.includes('another live process claims this data directory') && line.includes(`"pid":${serving.pid}`))).toBe(true);
      expect(await second.stop()).toEqual({ code: 0, signal: null });
      second = undefined;
      // The first one's claim outlives the second.
      expect(readFileSync(pidFilePath(dbPath), 'utf8').trim()).toBe(String(serving.pid));
      expect(await serving.stop()).toEqual({ code: 0, signal: null });
    } finally {
      await second?.close();
      await serving.close();
    }
    // Stopped (SIGTERM): the claim is gone, and the restore goes ahead.
    expect(existsSync(pidFilePath(dbPath))).toBe(false);
    expect((await cli(dataDir, ['restore', '--from', backupPath])).status).toBe(0);
  });

  it('backs up, refuses to restore under a running control plane, then restores into a new epoch', async () => {
    const dataDir = join(dir, 'data');
    const dbPath = join(dataDir, 'tether.db');
    const backupPath = join(dir, 'tether-backup.db');
    mkdirSync(dataDir, { mode: 0o700 });
    const store = SqliteStore.open(dbPath);
    await store.insertHost(host('h1', { state: 'active', joinSecretHash: null, credentialGeneration: 1 }));
    await store.insertAgent(agent('a1', { hostId: 'h1' }));
    const epoch = await store.epoch();
    await store.close();

    const backup = await cli(dataDir, ['backup', '--out', backupPath]);
    expect(backup.status, backup.stderr).toBe(0);
    expect(backup.stdout).toBe(`backed up 1 hosts, 1 agents, 0 pending messages (epoch ${epoch}, ${/(\d+) bytes/.exec(backup.stdout)?.[1]} bytes) to ${backupPath}\n`);
    const again = await cli(dataDir, ['backup', '--out', backupPath]);
    expect(again.status).toBe(1);
    expect(again.stderr).toBe(`error: ${backupPath} already exists; a backup never overwrites a file\n`);

    writeFileSync(pidFilePath(dbPath), `${process.pid}\n`);
    const refused = await cli(dataDir, ['restore', '--from', backupPath]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toBe(`error: a control plane (pid ${process.pid}) serves ${dbPath}: stop it first (if none runs, remove ${pidFilePath(dbPath)})\n`);

    rmSync(pidFilePath(dbPath));
    const restored = await cli(dataDir, ['restore', '--from', backupPath]);
    expect(restored.status, restored.stderr).toBe(0);
    const reopened = SqliteStore.open(dbPath);
    const newEpoch = await reopened.epoch();
    await reopened.close();
    expect(newEpoch).not.toBe(epoch);
    const lines = restored.stdout.trimEnd().split('\n');
    expect(lines.slice(0, 2)).toEqual([
      `restored 1 hosts, 1 agents, 0 pending messages from ${backupPath}`,
      `epoch ${epoch} -> ${newEpoch}; generations advanced by 4294967296`,
    ]);
    expect(lines[2]).toMatch(new RegExp(`^the replaced store is kept at ${dbPath}\\.replaced-\\d{4}-\\d\\d-\\d\\dT\\d{6}\\.\\d{3}Z$`));

    const help = await cli(dataDir, ['restore', '--help']);
    expect(help.stdout).toMatch(/new epoch/);
    expect(help.stdout).toMatch(/--from <file>/);
  });
});
