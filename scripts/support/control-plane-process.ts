import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

/** The repository root: where `bin/control-plane.js` is run from. */
const ROOT = join(import.meta.dirname, '..', '..');

/** How long `start` waits for the "serving" line and `close` for the exit, unless told: a bound that only catches a hang. */
const DEFAULT_BOUND_MS = 20_000;

/** Options of {@link ControlPlaneProcess.start}. */
export interface ControlPlaneProcessOptions {
  dataDir: string;
  /**
   * Passed as TETHER_ADMIN_TOKEN (the environment, never argv). Undefined:
   * none (not even the parent's), so the token comes from `--admin-token-file`
   * or the data directory.
   */
  adminToken: string | undefined;
  /** More arguments after `serve` (never a secret: argv is public). */
  args?: readonly string[];
  /** `host:port` for TETHER_LISTEN; default `127.0.0.1:0`. */
  listen?: string;
  /** TETHER_LOG_LEVEL; default `info`. */
  logLevel?: string;
  /** More environment for the child (`TETHER_AGENT_TOKEN_TTL`, …); never a secret but the admin token above. */
  env?: Readonly<Record<string, string>>;
  /** Node flags put before the script (`--expose-gc`, `--import <file>`). */
  nodeArgs?: readonly string[];
  /** Opens an IPC channel to the child (for a preloaded probe; see scripts/support/memory-probe.mjs). */
  hasIpc?: boolean;
  /**
   * Called with each line the child writes to stdout. When given, lines are
   * not kept in memory (a long soak would grow without bound); otherwise they
   * are, for {@link ControlPlaneProcess.stdoutLines}.
   */
  onLine?: (line: string) => void;
  /** Bound on waiting for the "serving" line. Default 20 s. */
  boundMs?: number;
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
 * for assertions (they never hold a token) unless `onLine` takes them. Whoever
 * starts one calls `close()`. Shared by the tests and the chaos soak.
 */
export class ControlPlaneProcess {
  /** The bound gRPC port. */
  readonly port: number;
  /** Settles when the child has exited, however it ended. */
  readonly exited: Promise<ProcessExit>;
  readonly #child: ChildProcess;
  readonly #output: { stdout: string[]; stderr: string[] };
  readonly #boundMs: number;

  private constructor(child: ChildProcess, port: number, exited: Promise<ProcessExit>, output: { stdout: string[]; stderr: string[] }, boundMs: number) {
    this.#child = child;
    this.port = port;
    this.exited = exited;
    this.#output = output;
    this.#boundMs = boundMs;
  }

  /** Spawns the control plane and waits (bounded) for its "serving" line. */
  static async start(options: ControlPlaneProcessOptions): Promise<ControlPlaneProcess> {
    const boundMs = options.boundMs ?? DEFAULT_BOUND_MS;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...options.env,
      TETHER_LISTEN: options.listen ?? '127.0.0.1:0',
      TETHER_HTTP_LISTEN: '',
      TETHER_DATA_DIR: options.dataDir,
      TETHER_ADMIN_TOKEN: options.adminToken,
      TETHER_LOG_LEVEL: options.logLevel ?? 'info',
    };
    if (options.adminToken === undefined) delete env.TETHER_ADMIN_TOKEN;
    const child = spawn(process.execPath, [...(options.nodeArgs ?? []), 'bin/control-plane.js', 'serve', ...(options.args ?? [])], {
      cwd: ROOT,
      env,
      stdio: options.hasIpc === true ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
    });
    const output = { stdout: [] as string[], stderr: [] as string[] };
    const exited = new Promise<ProcessExit>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      // Bounded: a child that writes to stderr without end keeps only its last few KiB here.
      output.stderr.push(chunk);
      if (output.stderr.length > 64) output.stderr.splice(0, output.stderr.length - 64);
    });
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream, crlfDelay: Infinity });
    const serving = new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`control plane did not log "control plane serving" within ${boundMs} ms`)), boundMs);
      lines.on('line', (line) => {
        if (options.onLine === undefined) output.stdout.push(line);
        else options.onLine(line);
        const record = parseLine(line);
        if (record?.msg === 'control plane serving' && typeof record.port === 'number') {
          clearTimeout(timer);
          resolve(record.port);
        }
      });
      exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`control plane exited (code ${code}, signal ${signal}) before serving: ${output.stderr.join('').trim()}`));
      }, reject);
    });
    try {
      const port = await serving;
      return new ControlPlaneProcess(child, port, exited, output, boundMs);
    } catch (err) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      throw err;
    }
  }

  /** Everything the child wrote to stdout so far, one JSON line each (empty when `onLine` takes them). */
  stdoutLines(): readonly string[] {
    return this.#output.stdout;
  }

  /** What the child wrote to stderr (its last few KiB). */
  stderrText(): string {
    return this.#output.stderr.join('');
  }

  /** Everything kept of what the child printed, stdout then stderr, for a scan for secrets. */
  outputText(): string {
    return `${this.#output.stdout.join('\n')}\n${this.stderrText()}`;
  }

  /** The child's process id (for /proc/<pid>). */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Whether the child is still running. */
  get isRunning(): boolean {
    return this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /**
   * Sends `message` over the IPC channel (`hasIpc`) and resolves with the
   * first message back that `match` accepts; fails after the bound or if the
   * child exits first.
   */
  request<T>(message: unknown, match: (reply: unknown) => reply is T): Promise<T> {
    const child = this.#child;
    if (child.send === undefined || !child.connected) return Promise.reject(new Error('the control plane has no IPC channel'));
    return new Promise<T>((resolve, reject) => {
      const onMessage = (reply: unknown): void => {
        if (!match(reply)) return;
        cleanup();
        resolve(reply);
      };
      const onExit = (): void => {
        cleanup();
        reject(new Error('the control plane exited before it answered'));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`the control plane did not answer within ${this.#boundMs} ms`));
      }, this.#boundMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        child.off('message', onMessage);
        child.off('exit', onExit);
      };
      child.on('message', onMessage);
      child.once('exit', onExit);
      child.send?.(message as object, (err) => {
        if (err !== null) {
          cleanup();
          reject(err);
        }
      });
    });
  }

  /** Kills the child with SIGKILL at once: no shutdown, no flush (a crash). */
  crash(): void {
    if (this.isRunning) this.#child.kill('SIGKILL');
  }

  /** Asks the child to shut down gracefully (SIGTERM) and waits (bounded) for it to exit. */
  async stop(): Promise<ProcessExit> {
    if (this.isRunning) this.#child.kill('SIGTERM');
    return within(this.exited, 'the control plane to shut down', this.#boundMs);
  }

  /** Kills the child if it still runs and waits (bounded) for it to exit. Idempotent. */
  async close(): Promise<ProcessExit> {
    this.crash();
    return within(this.exited, 'the control plane to exit', this.#boundMs);
  }
}

/** Resolves or rejects as `promise` does, or fails naming `what` after `boundMs`. */
export function within<T>(promise: Promise<T>, what: string, boundMs: number): Promise<T> {
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
