/** The `control-plane` and `agent-host` binaries, run for real as an operator runs them (`node bin/<name>.js ...`). */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { HANG_BOUND_MS, waitUntil } from './wait.js';

const ROOT = join(import.meta.dirname, '..', '..');

/** What one run of a binary printed, and how it exited. */
export interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** A binary of this repository. */
export type Binary = 'control-plane' | 'agent-host';

/**
 * Runs `<binary> <args>` from the repository root with exactly `env` as its
 * environment, feeding it `stdin`, until it exits. Fails if it hangs (a bound,
 * never a measure of speed); the failure shows what it printed.
 */
export function runBinary(binary: Binary, args: readonly string[], env: NodeJS.ProcessEnv, stdin = ''): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [`bin/${binary}.js`, ...args], { cwd: ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${binary} ${args.join(' ')} hung:\n${stdout}\n${stderr}`));
    }, HANG_BOUND_MS * 2);
    child.once('error', reject);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    child.stdin.end(stdin);
  });
}

/** Runs `control-plane <args>`: {@link runBinary}. */
export function runControlPlaneCli(args: readonly string[], env: NodeJS.ProcessEnv, stdin = ''): Promise<CliRun> {
  return runBinary('control-plane', args, env, stdin);
}

/**
 * A binary left running (an `agent-host`), everything it prints kept for
 * assertions. Whoever starts one calls `stop()`.
 */
export class RunningBinary {
  readonly #child: ChildProcess;
  readonly #output = { stdout: '', stderr: '' };
  readonly #exited: Promise<number | null>;

  private constructor(child: ChildProcess) {
    this.#child = child;
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (this.#output.stdout += chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (this.#output.stderr += chunk));
    this.#exited = new Promise((resolve) => child.once('close', (code) => resolve(code)));
  }

  /** Spawns `<binary> <args>` from the repository root with exactly `env` as its environment. */
  static start(binary: Binary, args: readonly string[], env: NodeJS.ProcessEnv): RunningBinary {
    return new RunningBinary(spawn(process.execPath, [`bin/${binary}.js`, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  /** What it printed so far. */
  get stdout(): string {
    return this.#output.stdout;
  }

  get stderr(): string {
    return this.#output.stderr;
  }

  /** Resolves once a line of its standard output holds `text`; fails after the hang bound, or at once if it exits first. */
  async waitForOutput(text: string, what: string): Promise<void> {
    let hasExited = false;
    this.#exited.then(
      () => (hasExited = true),
      () => (hasExited = true),
    );
    await waitUntil(() => {
      if (this.#output.stdout.includes(text)) return true;
      if (hasExited) throw new Error(`it exited before ${what}:\n${this.#output.stdout}\n${this.#output.stderr}`);
      return false;
    }, what);
  }

  /** SIGTERM, then its exit code (bounded: SIGKILL and a failure after twice the hang bound). */
  async stop(): Promise<number | null> {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        this.#child.kill('SIGKILL');
        reject(new Error('the binary did not exit on SIGTERM'));
      }, HANG_BOUND_MS * 2);
    });
    try {
      return await Promise.race([this.#exited, bound]);
    } finally {
      clearTimeout(timer);
    }
  }
}
