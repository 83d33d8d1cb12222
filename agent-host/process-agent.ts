import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join, resolve } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { Readable } from 'node:stream';
import type { Clock } from '../common/clock.js';
import { FailedPreconditionError, InvalidArgumentError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Credential } from '../gen/tether/v1/common.js';
import { ensureAgentDirectory, prepareAgentsDirectory } from './agents-directory.js';
import { AgentEndedError, MessageRefusedError, type AgentEnd, type AgentRunner, type AgentRunnerContext, type AgentRunnerFactory } from './agent-runner.js';
import { childEnvironment } from './child-environment.js';
import { encodeMessageLine, encodePingLine, LineSplitter, parseControlLine, redactJwts, type SplitLine } from './process-protocol.js';
import { forgetAgentProcess, recordAgentProcess, stopStaleAgentProcess } from './stale-agents.js';
import { TokenFile } from './token-file.js';
import { AudienceFileKeeper } from './audience-file-keeper.js';
import type { DeliveredMessage } from './tools/agent-module.js';

/** An agent id usable as one path component (the control plane's own pattern: no `/`, never `.` or `..`). */
const AGENT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Longest line of a child's output the host keeps (characters); the rest of the line is dropped. */
export const MAX_OUTPUT_LINE_CHARS = 4096;

/** Options of {@link processRunner}: what the host configures, the same for all its process agents. */
export interface ProcessRunnerOptions {
  /** The commands this host allows; anything else is refused here too, whatever the control plane says. */
  allowedCommands: readonly string[];
  /** Each agent runs in `<agentsDir>/<agent-id>/` (0700); see {@link prepareAgentsDirectory} for what `agentsDir` may be. */
  agentsDir: string;
  /** The control plane, `host:port` (the agent's `TETHER_SERVER`). */
  server: string;
  /** CA certificate for a TLS control plane (the agent's `TETHER_CA_FILE`). */
  caFile?: string;
  /** Between SIGTERM and SIGKILL, waited through the clock. */
  stopGraceMs: number;
  /** The host's environment, filtered through an allow-list before any of it reaches a child. */
  environment: Readonly<Record<string, string | undefined>>;
}

/** How the child process ended. */
interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** The message the child holds now. */
interface Pending {
  seq: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Runs a process agent: `spec.command` (one the host allows) with `spec.args`,
 * as a child process. See {@link ProcessAgent}.
 */
export function processRunner(options: ProcessRunnerOptions): AgentRunnerFactory {
  return (context) => ProcessAgent.start(context, options);
}

/** What an exit looks like to the control plane. */
function describeExit(status: ExitStatus): AgentEnd {
  if (status.code === 0) return { state: 'exited', detail: 'exited with code 0' };
  if (status.signal !== null) return { state: 'failed', detail: `killed by signal ${status.signal}` };
  return { state: 'failed', detail: `exited with code ${status.code ?? 'unknown'}` };
}

/**
 * A process agent: a child process in a 0700 directory of its own, its current
 * token in a 0600 file there (replaced atomically at each rotation), messages
 * as NDJSON on its stdin, acks and nacks as NDJSON on its stdout, everything
 * else it writes logged line by line (bounded, JWT-shaped text redacted).
 *
 * Its environment is built from an allow-list, never the host's own. It is
 * spawned with pipes for stdio and in a process group of its own: when the host
 * dies its stdin closes, which is its cue to exit, so no orphan keeps a token;
 * a terminal's Ctrl-C reaches the host alone, which stops its agents in order.
 * Stopping sends SIGTERM (and closes stdin) to the group, then SIGKILL after the
 * grace period.
 */
export class ProcessAgent implements AgentRunner {
  /** Settles once the process has exited and its output up to then has been read (bounded by the grace period). */
  readonly ended: Promise<AgentEnd>;
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #tokenFile: TokenFile;
  readonly #agentDir: string;
  readonly #audienceFiles: AudienceFileKeeper | undefined;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #stopGraceMs: number;
  readonly #exited: Promise<ExitStatus>;
  #exitStatus: ExitStatus | undefined;
  #pending: Pending | undefined;
  #closing: Promise<void> | undefined;
  /** The last probe sent (0: none yet); a pong names one of them. */
  #lastPing = 0;
  readonly #onPong: (() => void) | undefined;

  private constructor(
    child: ChildProcessWithoutNullStreams,
    tokenFile: TokenFile,
    agentDir: string,
    audienceFiles: AudienceFileKeeper | undefined,
    context: AgentRunnerContext,
    stopGraceMs: number,
  ) {
    this.#child = child;
    this.#tokenFile = tokenFile;
    this.#agentDir = agentDir;
    this.#audienceFiles = audienceFiles;
    this.#clock = context.clock;
    this.#logger = context.logger.child({ pid: child.pid });
    this.#stopGraceMs = stopGraceMs;
    this.#onPong = context.onPong;
    child.on('error', (err) => this.#logger.warn({ err }, 'agent process error'));
    child.stdin.on('error', (err) => {
      // EPIPE: the child closed its stdin or died; its exit is handled below.
      this.#logger.debug({ err }, 'agent stdin closed');
      this.#pending?.reject(new AgentEndedError('agent closed its stdin'));
      this.#pending = undefined;
    });
    const stdoutDone = this.#readLines(child.stdout, (line) => this.#onStdout(line));
    const stderrDone = this.#readLines(child.stderr, (line) => this.#log('stderr', line));
    this.#exited = new Promise<ExitStatus>((resolve) => {
      child.once('exit', (code, signal) => {
        const status = { code, signal };
        this.#exitStatus = status;
        this.#logger.info({ code, signal }, 'agent process exited');
        resolve(status);
      });
    });
    this.ended = this.#exited.then(async (status) => {
      // Let the output written before the exit (an ack among it) be read first; a
      // grandchild holding the pipes open must not hold this up past the grace period.
      const drained = new AbortController();
      // A pipe that fails has nothing more to read either.
      Promise.all([stdoutDone, stderrDone]).then(
        () => drained.abort(),
        () => drained.abort(),
      );
      await this.#clock.sleep(this.#stopGraceMs, drained.signal);
      drained.abort();
      const end = describeExit(status);
      this.#pending?.reject(new AgentEndedError(`agent ${end.detail} before answering`));
      this.#pending = undefined;
      return end;
    });
  }

  /** Prepares the agent's directory and token file, then spawns the child; rejects if it cannot start. */
  static async start(context: AgentRunnerContext, options: ProcessRunnerOptions): Promise<ProcessAgent> {
    const { start } = context;
    const spec = start.spec;
    if (spec?.kind !== 'process') throw new InvalidArgumentError('not a process agent');
    if (!options.allowedCommands.includes(spec.command)) throw new FailedPreconditionError(`command ${spec.command} is not allowed on this host`);
    if (!AGENT_ID_PATTERN.test(start.agentId)) throw new InvalidArgumentError('agent id is not usable as a directory name');
    // Absolute: the child runs in its own directory, and the paths it is given must hold there.
    const agentsDir = resolve(options.agentsDir);
    await prepareAgentsDirectory(agentsDir);
    const agentDir = join(agentsDir, start.agentId);
    await ensureAgentDirectory(agentDir);
    // A copy an earlier run of this host left running here would read the token written next: gone first.
    await stopStaleAgentProcess(agentDir, context.logger);
    const tokenFile = new TokenFile(join(agentDir, 'token'));
    await tokenFile.write(context.credentials.get());
    // Audience tokens in files (<agent dir>/tokens/NAME), written before the agent starts and kept fresh while it runs.
    const audienceFileSpecs = spec.audienceFiles?.files ?? [];
    let audienceFiles: AudienceFileKeeper | undefined;
    if (audienceFileSpecs.length > 0) {
      const credential = start.credential;
      try {
        audienceFiles = await AudienceFileKeeper.start({
          dir: join(agentDir, 'tokens'),
          files: audienceFileSpecs,
          client: context.client,
          clock: context.clock,
          logger: context.logger,
          agentTokenTtlMs: credential === undefined ? 0 : credential.expiresAtMs - credential.issuedAtMs,
        });
      } catch (err) {
        await tokenFile.close();
        throw new FailedPreconditionError(`cannot write the audience files: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
    }
    const env = childEnvironment(options.environment, {
      agentId: start.agentId,
      name: start.name,
      incarnation: start.incarnation,
      server: options.server,
      tokenFile: tokenFile.path,
      agentDir,
      config: spec.config,
      ...(options.caFile === undefined ? {} : { caFile: options.caFile }),
      ...(audienceFiles === undefined ? {} : { audienceFiles: audienceFiles.variables() }),
    });
    let child: ChildProcessWithoutNullStreams;
    try {
      child = spawn(spec.command, spec.args, {
        cwd: agentDir,
        env,
        stdio: ['pipe', 'pipe', 'pipe'],
        // A process group of its own: signals from a terminal go to the host alone, and stopping reaches the agent's own children.
        detached: process.platform !== 'win32',
        shell: false,
        windowsHide: true,
      });
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => {
          child.off('spawn', onSpawn);
          reject(err);
        };
        const onSpawn = (): void => {
          child.off('error', onError);
          resolve();
        };
        child.once('spawn', onSpawn);
        child.once('error', onError);
      });
    } catch (err) {
      await tokenFile.close();
      await audienceFiles?.close();
      throw new FailedPreconditionError(`cannot start ${spec.command}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    const agent = new ProcessAgent(child, tokenFile, agentDir, audienceFiles, context, options.stopGraceMs);
    // Known on disk while it runs, so a later run of this host can stop it if this one dies first.
    if (child.pid !== undefined) {
      // Not fatal (the child is running): without the record, only a later run of this host is left blind to it.
      await recordAgentProcess(agentDir, child.pid).catch((err: unknown) => agent.#logger.warn({ err }, 'could not record the agent process id'));
    }
    agent.#logger.info({ command: spec.command, args: spec.args.length, agentDir }, 'agent process started');
    return agent;
  }

  /** The child's process id. */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Writes `message` to the child's stdin; settles with its ack (resolves) or nack (MessageRefusedError), or AgentEndedError. */
  handle(message: DeliveredMessage): Promise<void> {
    if (this.#closing !== undefined || this.#exitStatus !== undefined) return Promise.reject(new AgentEndedError());
    return new Promise<void>((resolve, reject) => {
      this.#pending = { seq: message.seq, resolve, reject };
      this.#child.stdin.write(encodeMessageLine(message));
    });
  }

  /** Writes a liveness probe to the child's stdin (see {@link AgentRunner.ping}); false once the process has exited or is being stopped. */
  ping(): boolean {
    if (this.#closing !== undefined || !this.isAlive()) return false;
    this.#lastPing++;
    this.#child.stdin.write(encodePingLine(this.#lastPing));
    this.#logger.debug({ ping: this.#lastPing }, 'liveness probe sent');
    return true;
  }

  /** Whether the child process has not exited (as far as Node has seen). */
  isAlive(): boolean {
    return this.#exitStatus === undefined && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** Replaces the token file; the stream's next envelope is handled only after this resolves. */
  async applyCredential(credential: Credential): Promise<void> {
    await this.#tokenFile.write(credential.token);
    this.#audienceFiles?.onCredential();
  }

  /** Stops the child (stdin closed and SIGTERM, SIGKILL after the grace period) and removes its token file. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#exitStatus === undefined) {
      const exited = new AbortController();
      this.#exited.then(
        () => exited.abort(),
        () => exited.abort(),
      );
      // Armed before the signal is sent, so whoever sees the SIGTERM can count on the wait being under way.
      const grace = this.#clock.sleep(this.#stopGraceMs, exited.signal);
      this.#child.stdin.end();
      this.#kill('SIGTERM');
      await grace;
      exited.abort();
      if (this.#exitStatus === undefined) {
        this.#logger.warn({ graceMs: this.#stopGraceMs }, 'agent process outlived its grace period; killing it');
        this.#kill('SIGKILL');
      }
      await this.#exited;
    }
    await this.ended;
    await this.#tokenFile.close();
    await this.#audienceFiles?.close();
    await forgetAgentProcess(this.#agentDir);
    this.#child.stdout.destroy();
    this.#child.stderr.destroy();
  }

  /**
   * Past the host's stop deadline: SIGKILL to the whole process group (it
   * cannot be ignored; the agent's own children go too), the token file
   * removed and the output pipes closed, without waiting for the agent. The
   * exit is still reaped and logged as it comes.
   */
  async abandon(): Promise<void> {
    this.#logger.warn('abandoning agent process: killing its process group');
    this.#kill('SIGKILL');
    this.#child.stdin.destroy();
    this.#child.stdout.destroy();
    this.#child.stderr.destroy();
    await this.#tokenFile.close();
    await this.#audienceFiles?.close();
  }

  /** Signals the child's process group (the child alone on Windows), only while the child is not reaped (its pid cannot be reused yet). */
  #kill(signal: NodeJS.Signals): void {
    const pid = this.#child.pid;
    if (this.#exitStatus !== undefined || pid === undefined) return;
    try {
      if (process.platform === 'win32') this.#child.kill(signal);
      else process.kill(-pid, signal);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') this.#logger.warn({ err, signal }, 'cannot signal agent process');
    }
  }

  #onStdout(line: SplitLine): void {
    const control = line.isTruncated ? undefined : parseControlLine(line.text);
    if (control === undefined) {
      this.#log('stdout', line);
      return;
    }
    if (control.type === 'pong') {
      if (control.ping > this.#lastPing) this.#logger.warn({ ping: control.ping }, 'agent answered a probe it was never sent; ignored');
      else this.#onPong?.();
      return;
    }
    const pending = this.#pending;
    if (pending?.seq !== control.seq) {
      this.#logger.warn({ seq: control.seq, inHand: pending?.seq }, `agent sent a ${control.type} for a message it does not hold; ignored`);
      return;
    }
    this.#pending = undefined;
    if (control.type === 'ack') pending.resolve();
    else pending.reject(new MessageRefusedError(control.error));
  }

  #log(stream: 'stdout' | 'stderr', line: SplitLine): void {
    this.#logger.info({ stream, line: redactJwts(line.text), ...(line.isTruncated ? { isTruncated: true } : {}) }, 'agent output');
  }

  /** Reads `stream` line by line (bounded); resolves when it ends. */
  #readLines(stream: Readable, onLine: (line: SplitLine) => void): Promise<void> {
    const decoder = new StringDecoder('utf8');
    const splitter = new LineSplitter(MAX_OUTPUT_LINE_CHARS);
    return new Promise<void>((resolve) => {
      stream.on('data', (chunk: Buffer) => {
        for (const line of splitter.push(decoder.write(chunk))) onLine(line);
      });
      const finish = (): void => {
        const rest = splitter.push(decoder.end());
        for (const line of rest) onLine(line);
        const last = splitter.flush();
        if (last !== undefined) onLine(last);
        resolve();
      };
      stream.once('end', finish);
      stream.once('close', resolve);
      stream.on('error', (err) => this.#logger.debug({ err }, 'agent output stream error'));
    });
  }
}
