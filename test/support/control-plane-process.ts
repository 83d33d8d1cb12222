import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { HANG_BOUND_MS } from './wait.js';

/** The repository root: where `bin/control-plane.js` is run from. */
const ROOT = join(import.meta.dirname, '..', '..');

/** Options of {@link ControlPlaneProcess.start}. */
export interface ControlPlaneProcessOptions {
  dataDir: string;
  /** Passed as TETHER_ADMIN_TOKEN (the environment, never argv). */
  adminToken: string;
  /** `host:port` for TETHER_LISTEN; default `127.0.0.1:0`. */
  listen?: string;
  /** TETHER_LOG_LEVEL; default `info`. */
  logLevel?: string;
}

/** How the child ended. */
export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * `control-plane serve` as a child process (`bin/control-plane.js`, as an
 * operator runs it), with no HTTP listener. `start` resolves once it logged
 * "control plane serving", with the port it bound. Its JSON log lines are kept
 * for assertions (they never hold a token). Whoever starts one calls `close()`.
 */
export class ControlPlaneProcess {
  /** The bound gRPC port. */
  readonly port: number;
  /** Settles when the child has exited, however it ended. */
  readonly exited: Promise<ProcessExit>;
  readonly #child: ChildProcess;
  readonly #output: { stdout: string[]; stderr: string[] };

  private constructor(child: ChildProcess, port: number, exited: Promise<ProcessExit>, output: { stdout: string[]; stderr: string[] }) {
    this.#child = child;
    this.port = port;
    this.exited = exited;
    this.#output = output;
  }

  /** Spawns the control plane and waits (bounded) for its "serving" line. */
  static async start(options: ControlPlaneProcessOptions): Promise<ControlPlaneProcess> {
    const child = spawn(process.execPath, ['bin/control-plane.js', 'serve'], {
      cwd: ROOT,
      env: {
        ...process.env,
        TETHER_LISTEN: options.listen ?? '127.0.0.1:0',
        TETHER_HTTP_LISTEN: '',
        TETHER_DATA_DIR: options.dataDir,
        TETHER_ADMIN_TOKEN: options.adminToken,
        TETHER_LOG_LEVEL: options.logLevel ?? 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const output = { stdout: [] as string[], stderr: [] as string[] };
    const exited = new Promise<ProcessExit>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => output.stderr.push(chunk));
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream, crlfDelay: Infinity });
    const serving = new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`control plane did not log "control plane serving" within ${HANG_BOUND_MS} ms`)), HANG_BOUND_MS);
      lines.on('line', (line) => {
        output.stdout.push(line);
        const record = parseLine(line);
        if (record?.msg === 'control plane serving' && typeof record.port === 'number') {
          clearTimeout(timer);
          resolve(record.port);
        }
      });
      void exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`control plane exited (code ${code}, signal ${signal}) before serving: ${output.stderr.join('').trim()}`));
      });
    });
    try {
      const port = await serving;
      return new ControlPlaneProcess(child, port, exited, output);
    } catch (err) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      throw err;
    }
  }

  /** Everything the child wrote to stdout so far, one JSON line each. */
  stdoutLines(): readonly string[] {
    return this.#output.stdout;
  }

  /** Everything the child wrote to stderr so far. */
  stderrText(): string {
    return this.#output.stderr.join('');
  }

  /** Whether the child is still running. */
  get isRunning(): boolean {
    return this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** Kills the child with SIGKILL at once: no shutdown, no flush (a crash). */
  crash(): void {
    if (this.isRunning) this.#child.kill('SIGKILL');
  }

  /** Kills the child if it still runs and waits (bounded) for it to exit. Idempotent. */
  async close(): Promise<ProcessExit> {
    this.crash();
    return withinHangBound(this.exited, 'the control plane to exit');
  }
}

/** Resolves or rejects as `promise` does, or fails naming `what` after the hang bound. */
export function withinHangBound<T>(promise: Promise<T>, what: string, boundMs = HANG_BOUND_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), boundMs);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

function parseLine(line: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
