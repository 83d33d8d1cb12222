/**
 * `--token-file`: the commands that print a secret (`hosts enroll`'s join
 * token, `generate-admin-token`'s admin token) write it instead to a new file,
 * mode 0600 from the start (checked under umask 0, which the child inherits),
 * refuse an existing path or a symbolic link before asking for the secret, and
 * then print no secret. The real binary against a real control plane.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runControlPlaneCli, type CliRun } from '../../support/control-plane-cli.js';
import { call, Harness } from '../../support/harness.js';

describe('--token-file', () => {
  let harness: Harness | undefined;
  let dir: string;
  let savedUmask: number;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-token-file-'));
    // The child inherits it: a file created with the default mode (0666) would be world-readable.
    savedUmask = process.umask(0);
  });

  afterEach(async () => {
    process.umask(savedUmask);
    await harness?.close();
    harness = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  function cli(args: string[]): Promise<CliRun> {
    return runControlPlaneCli(args, {
      PATH: process.env.PATH ?? '',
      ...(harness === undefined ? {} : { TETHER_SERVER: harness.target, TETHER_ADMIN_TOKEN: harness.adminToken }),
    });
  }

  async function hostNames(h: Harness): Promise<string[]> {
    return (await call(h.admin.listHosts.bind(h.admin), { pageSize: 100, pageToken: '' })).hosts.map((host) => host.name);
  }

  it('hosts enroll writes the join token to a new 0600 file and prints only the host id', async () => {
    harness = await Harness.start();
    const file = join(dir, 'join-token');
    const run = await cli(['hosts', 'enroll', 'build-1', '--token-file', file]);
    expect(run.status, run.stderr).toBe(0);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const joinToken = readFileSync(file, 'utf8').trim();
    const [hostId, secret] = joinToken.split('.');
    expect(hostId).toMatch(/^\S+$/);
    expect(secret).toMatch(/^\S{16,}$/);
    expect(run.stdout.trim()).toBe(hostId);
    expect(run.stdout + run.stderr).not.toContain(secret);
    expect(run.stderr).toContain(`written to ${file}`);
    expect(await hostNames(harness)).toEqual(['build-1']);
  });

  it('hosts enroll refuses an existing file and a symbolic link (dangling or not) before enrolling, and writes nothing', async () => {
    harness = await Harness.start();
    const existing = join(dir, 'existing');
    writeFileSync(existing, 'keep me\n', { mode: 0o644 });
    const target = join(dir, 'target');
    writeFileSync(target, 'keep me too\n');
    symlinkSync(target, join(dir, 'link'));
    symlinkSync(join(dir, 'nowhere'), join(dir, 'dangling'));

    const refusedExisting = await cli(['hosts', 'enroll', 'h1', '--token-file', existing]);
    expect(refusedExisting.status).toBe(1);
    expect(refusedExisting.stderr).toContain(`${existing} already exists`);
    for (const link of ['link', 'dangling']) {
      const refused = await cli(['hosts', 'enroll', 'h1', '--token-file', join(dir, link)]);
      expect(refused.status, link).toBe(1);
      expect(refused.stderr, link).toContain(`${join(dir, link)} is a symbolic link`);
      expect(refused.stdout, link).toBe('');
    }
    expect(readFileSync(existing, 'utf8')).toBe('keep me\n');
    expect(readFileSync(target, 'utf8')).toBe('keep me too\n');
    expect(existsSync(join(dir, 'nowhere'))).toBe(false);
    expect(await hostNames(harness)).toEqual([]);
  });

  it('hosts enroll leaves no file behind when the control plane refuses it', async () => {
    harness = await Harness.start();
    const file = join(dir, 'join-token');
    const run = await runControlPlaneCli(['hosts', 'enroll', 'h1', '--token-file', file], {
      PATH: process.env.PATH ?? '',
      TETHER_SERVER: harness.target,
      TETHER_ADMIN_TOKEN: 'not-the-admin-token',
    });
    expect(run.status).toBe(4);
    expect(run.stderr).toMatch(/^error: the control plane refused the admin token .*check --admin-token-file/);
    expect(existsSync(file)).toBe(false);
  });

  it('generate-admin-token writes a new 0600 file and prints nothing; refuses an existing path and a link', async () => {
    const file = join(dir, 'admin-token');
    const run = await cli(['generate-admin-token', '--token-file', file]);
    expect(run.status, run.stderr).toBe(0);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const token = readFileSync(file, 'utf8');
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}\n$/);
    expect(run.stdout).toBe('');
    expect(run.stderr).not.toContain(token.trim());

    const again = await cli(['generate-admin-token', '--token-file', file]);
    expect(again.status).toBe(1);
    expect(again.stderr).toContain(`${file} already exists`);
    expect(readFileSync(file, 'utf8')).toBe(token);
    symlinkSync(join(dir, 'elsewhere'), join(dir, 'link'));
    const linked = await cli(['generate-admin-token', '--token-file', join(dir, 'link')]);
    expect(linked.status).toBe(1);
    expect(linked.stderr).toContain('is a symbolic link');
    expect(existsSync(join(dir, 'elsewhere'))).toBe(false);
  });
});
