/**
 * Stale process agents (issue 15, a killed host that returns): a copy an
 * earlier run of the host left running is stopped, whole process group, only
 * if it is a process agent of that very directory; a pid that now belongs to
 * anything else is never touched.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AGENT_PID_FILE, recordAgentProcess, stopStaleAgentProcess, stopStaleAgents } from '../../agent-host/stale-agents.js';
import { LogCapture } from '../support/log-capture.js';
import { waitUntil } from '../support/wait.js';

/** A process that sleeps until killed, in a group of its own, with `env`; resolves once it runs. */
async function sleeper(env: Record<string, string>): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => undefined, 1 << 30)'], { env: { ...env, PATH: process.env.PATH ?? '' }, stdio: 'ignore', detached: true });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', reject);
  });
  return child;
}

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

describe.skipIf(process.platform !== 'linux')('stale process agents', () => {
  const dirs: string[] = [];
  const children: ChildProcess[] = [];

  afterEach(() => {
    for (const child of children.splice(0)) if (isRunning(child)) child.kill('SIGKILL');
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  function agentDir(name: string): string {
    const root = mkdtempSync(join(tmpdir(), 'tether-stale-'));
    dirs.push(root);
    const dir = join(root, name);
    mkdirSync(dir, { mode: 0o700 });
    return dir;
  }

  it('stops the process group an earlier run left in the directory, and forgets it', async () => {
    const dir = agentDir('left');
    const stale = await sleeper({ TETHER_AGENT_DIR: dir });
    children.push(stale);
    const exited = new Promise((resolve) => stale.once('exit', resolve));
    writeFileSync(join(dir, AGENT_PID_FILE), `${stale.pid}\n`, { mode: 0o600 });
    const logs = new LogCapture();
    expect(await stopStaleAgentProcess(dir, logs.logger)).toBe(stale.pid);
    await exited;
    expect(stale.signalCode).toBe('SIGKILL');
    expect(existsSync(join(dir, AGENT_PID_FILE))).toBe(false);
    expect(logs.text()).toMatch(/stale copy/);
  });

  it('leaves alone a process whose environment names another directory (a reused pid), and one with no pid file', async () => {
    const dir = agentDir('reused');
    const other = await sleeper({ TETHER_AGENT_DIR: `${dir}-not` });
    children.push(other);
    writeFileSync(join(dir, AGENT_PID_FILE), `${other.pid}\n`, { mode: 0o600 });
    const logs = new LogCapture();
    expect(await stopStaleAgentProcess(dir, logs.logger)).toBeUndefined();
    expect(isRunning(other)).toBe(true);
    // The record is dropped: it named something else.
    expect(existsSync(join(dir, AGENT_PID_FILE))).toBe(false);
    expect(await stopStaleAgentProcess(agentDir('none'), logs.logger)).toBeUndefined();
    expect(isRunning(other)).toBe(true);
  });

  it('never follows a link in place of the record, reading or writing it', async () => {
    const dir = agentDir('linked');
    const elsewhere = join(dir, '..', 'elsewhere');
    writeFileSync(elsewhere, 'not the host\'s to write');
    const other = await sleeper({ TETHER_AGENT_DIR: dir });
    children.push(other);
    writeFileSync(join(dir, '..', 'pid-elsewhere'), `${other.pid}\n`);
    symlinkSync(join(dir, '..', 'pid-elsewhere'), join(dir, AGENT_PID_FILE));
    expect(await stopStaleAgentProcess(dir, new LogCapture().logger)).toBeUndefined();
    expect(isRunning(other)).toBe(true);
    symlinkSync(elsewhere, join(dir, AGENT_PID_FILE));
    await recordAgentProcess(dir, 12345);
    expect(readFileSync(elsewhere, 'utf8')).toBe("not the host's to write");
    expect(lstatSync(join(dir, AGENT_PID_FILE)).isFile()).toBe(true);
    expect(lstatSync(join(dir, AGENT_PID_FILE)).mode & 0o777).toBe(0o600);
  });

  it('at a host start: stops every stale copy and deletes every token file left in the agents directory', async () => {
    const first = agentDir('a');
    const agentsDir = join(first, '..');
    const second = join(agentsDir, 'b');
    mkdirSync(second, { mode: 0o700 });
    const stale = await sleeper({ TETHER_AGENT_DIR: first });
    children.push(stale);
    writeFileSync(join(first, AGENT_PID_FILE), `${stale.pid}\n`, { mode: 0o600 });
    for (const dir of [first, second]) writeFileSync(join(dir, 'token'), 'x.y.z', { mode: 0o600 });
    writeFileSync(join(second, 'kept'), 'the agent\'s own file');
    expect(await stopStaleAgents(agentsDir, new LogCapture().logger)).toBe(1);
    await waitUntil(() => !isRunning(stale), 'the stale copy to exit');
    for (const dir of [first, second]) expect(existsSync(join(dir, 'token'))).toBe(false);
    expect(readFileSync(join(second, 'kept'), 'utf8')).toBe("the agent's own file");
  });
});
