/** The `control-plane` binary, run for real as an operator runs it (`node bin/control-plane.js ...`). */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { HANG_BOUND_MS } from './wait.js';

const ROOT = join(import.meta.dirname, '..', '..');

/** What one run of the binary printed, and how it exited. */
export interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `control-plane <args>` from the repository root with exactly `env` as its
 * environment, feeding it `stdin`. Fails if it hangs (a bound, never a measure of speed).
 */
export function runControlPlaneCli(args: readonly string[], env: NodeJS.ProcessEnv, stdin = ''): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/control-plane.js', ...args], { cwd: ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`control-plane ${args.join(' ')} hung:\n${stdout}\n${stderr}`));
    }, HANG_BOUND_MS * 2);
    child.once('error', reject);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    child.stdin.end(stdin);
  });
}
