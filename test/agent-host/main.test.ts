/**
 * The duration flags of `agent-host` have a floor and a ceiling, and a refusal
 * names the flag: through the real command-line program in-process (its action
 * replaced, so no host starts), and once through the real binary.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { agentHostProgram, HOST_DURATION_BOUNDS } from '../../agent-host/main.js';
import { HANG_BOUND_MS } from '../support/wait.js';

const ROOT = join(import.meta.dirname, '..', '..');

/** What `agent-host <args>` parses to, or the error it refuses them with; never starts a host. */
async function parseHost(args: readonly string[]): Promise<{ flags?: Record<string, unknown>; error?: string }> {
  let flags: Record<string, unknown> | undefined;
  let errorText = '';
  const program: Command = agentHostProgram()
    .exitOverride()
    .configureOutput({ writeErr: (text) => (errorText += text), writeOut: () => undefined })
    .action((parsed: Record<string, unknown>) => {
      flags = parsed;
    });
  try {
    await program.parseAsync([...args], { from: 'user' });
  } catch {
    return { error: errorText };
  }
  return flags === undefined ? {} : { flags };
}

/** Runs `node bin/agent-host.js <args>` with nothing inherited but PATH; fails if it hangs. */
function runAgentHostBinary(args: readonly string[]): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/agent-host.js', ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'ignore', 'pipe'] });
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

const DURATION_FLAGS: [string, keyof typeof HOST_DURATION_BOUNDS][] = [
  ['--stop-grace', 'stopGrace'],
  ['--stop-deadline', 'stopDeadline'],
  ['--keepalive', 'keepalive'],
  ['--stall-after', 'stallAfter'],
  ['--handler-deadline', 'handlerDeadline'],
  ['--drain-timeout', 'drainTimeout'],
];

describe('agent-host flags', () => {
  it('bounds every duration flag', () => {
    const durationOptions = agentHostProgram()
      .options.filter((option) => option.flags.includes('<duration>'))
      .map((option) => option.long);
    expect(durationOptions.sort()).toEqual(DURATION_FLAGS.map(([flag]) => flag).sort());
  });

  it.each(DURATION_FLAGS)('%s takes its floor and its ceiling, and refuses past either, naming itself', async (flag, key) => {
    const { minMs, maxMs } = HOST_DURATION_BOUNDS[key];
    expect((await parseHost([`${flag}=${minMs}`])).flags?.[key]).toBe(minMs);
    expect((await parseHost([`${flag}=${maxMs}`])).flags?.[key]).toBe(maxMs);
    const over = await parseHost([`${flag}=${maxMs + 1}`]);
    expect(over.flags).toBeUndefined();
    expect(over.error).toContain(`${flag} must be from`);
    const under = await parseHost([`${flag}=${minMs === 0 ? '-1s' : String(minMs - 1)}`]);
    expect(under.flags).toBeUndefined();
    expect(under.error).toContain(flag);
  });

  it('refuses a zero keepalive in the real binary, naming the flag', async () => {
    const run = await runAgentHostBinary(['--keepalive', '0']);
    expect(run.status).not.toBe(0);
    expect(run.stderr).toContain('--keepalive must be from 1s to 2h, got 0');
  });
});
