/**
 * The agents directory (`--agents-dir`): the host creates it 0700 when it is
 * missing, and otherwise leaves its mode alone (it is the operator's; a host
 * once forced a 1777 directory to 0700, dropping its sticky bit) and refuses
 * one that is shared: writable by group or others, another user's, or not a
 * real directory. Real directories in a temp dir.
 */
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ensureAgentDirectory, prepareAgentsDirectory } from '../../agent-host/agents-directory.js';
import { HANG_BOUND_MS } from '../support/wait.js';

const ROOT = join(import.meta.dirname, '..', '..');

/** Runs `node bin/agent-host.js <args>` with `env` and PATH; fails if it hangs. */
function runAgentHostBinary(args: readonly string[], env: Record<string, string>): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/agent-host.js', ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`agent-host ${args.join(' ')} hung:\n${stderr}`));
    }, HANG_BOUND_MS);
    child.once('error', reject);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stderr });
    });
  });
}

describe('prepareAgentsDirectory', () => {
  const dirs: string[] = [];
  let savedUmask: number | undefined;
  afterEach(() => {
    if (savedUmask !== undefined) process.umask(savedUmask);
    savedUmask = undefined;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  function tempDir(): string {
    const dir = mkdtempSync(join(tmpdir(), 'tether-agents-dir-'));
    dirs.push(dir);
    return dir;
  }

  /** `dir`'s permission bits, sticky and set-id bits included. */
  function modeOf(dir: string): number {
    return statSync(dir).mode & 0o7777;
  }

  it('creates a missing directory (and its parents) 0700, whatever the umask', async () => {
    savedUmask = process.umask(0);
    const dir = join(tempDir(), 'host', 'agents');
    await prepareAgentsDirectory(dir);
    expect(modeOf(dir)).toBe(0o700);
    expect(statSync(dir).isDirectory()).toBe(true);
  });

  it.each([
    ['1777', 'others'],
    ['777', 'others'],
    ['775', 'its group'],
    ['2770', 'its group'],
  ])('refuses an existing directory of mode %s (writable by %s) and leaves its mode as it was', async (octal, whom) => {
    const mode = Number.parseInt(octal, 8);
    const dir = join(tempDir(), 'shared');
    mkdirSync(dir);
    chmodSync(dir, mode);
    await expect(prepareAgentsDirectory(dir)).rejects.toThrow(`the agents directory ${dir} is writable by ${whom} (mode ${mode.toString(8)})`);
    expect(modeOf(dir)).toBe(mode);
  });

  it('takes an existing directory of its own that no one else can write, and does not change its mode', async () => {
    const dir = join(tempDir(), 'operator-made');
    mkdirSync(dir);
    chmodSync(dir, 0o755);
    await prepareAgentsDirectory(dir);
    expect(modeOf(dir)).toBe(0o755);
  });

  it("refuses another user's directory", async () => {
    const uid = process.getuid?.() ?? 0;
    // As root, a directory handed to nobody; as anyone else, the root directory (root's).
    let dir = '/';
    if (uid === 0) {
      dir = join(tempDir(), 'nobodys');
      mkdirSync(dir, { mode: 0o700 });
      chownSync(dir, 65_534, 65_534);
    }
    await expect(prepareAgentsDirectory(dir)).rejects.toThrow(/belongs to user \d+, not to this host's user/);
  });

  it('refuses a symbolic link and a file', async () => {
    const root = tempDir();
    const real = join(root, 'real');
    mkdirSync(real, { mode: 0o700 });
    symlinkSync(real, join(root, 'link'));
    await expect(prepareAgentsDirectory(join(root, 'link'))).rejects.toThrow(/is a symbolic link/);
    writeFileSync(join(root, 'file'), '');
    await expect(prepareAgentsDirectory(join(root, 'file'))).rejects.toThrow(`the agents directory ${join(root, 'file')} is not a directory`);
  });
});

describe('agent-host --agents-dir (the real binary)', () => {
  it('refuses a 1777 agents directory at start, saying why, and leaves its mode alone', async () => {
    const root = mkdtempSync(join(tmpdir(), 'tether-agents-bin-'));
    try {
      const shared = join(root, 'shared');
      mkdirSync(shared);
      chmodSync(shared, 0o1777);
      // Nothing listens on port 1: a host that went on to connect would retry until the hang bound.
      const run = await runAgentHostBinary(['--server', '127.0.0.1:1', '--data-dir', join(root, 'host'), '--allow-command', process.execPath, '--agents-dir', shared], {
        TETHER_JOIN_TOKEN: 'host-1.not-a-real-secret',
      });
      expect(run.status).toBe(1);
      expect(run.stderr).toContain(`agent-host: the agents directory ${shared} is writable by others (mode 1777)`);
      expect(statSync(shared).mode & 0o7777).toBe(0o1777);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('ensureAgentDirectory', () => {
  it("creates an agent's own directory 0700, narrows one the host made earlier, refuses a symbolic link", async () => {
    const root = mkdtempSync(join(tmpdir(), 'tether-agent-dir-'));
    try {
      await ensureAgentDirectory(join(root, 'a1'));
      expect(statSync(join(root, 'a1')).mode & 0o777).toBe(0o700);
      chmodSync(join(root, 'a1'), 0o755);
      await ensureAgentDirectory(join(root, 'a1'));
      expect(statSync(join(root, 'a1')).mode & 0o777).toBe(0o700);
      symlinkSync(join(root, 'a1'), join(root, 'a2'));
      await expect(ensureAgentDirectory(join(root, 'a2'))).rejects.toThrow(/not a directory/);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
