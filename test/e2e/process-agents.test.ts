/**
 * Process agents (ARCHITECTURE.md, "Agent host" → agent kinds, "The trust
 * boundary on one host"): a command the host allows runs as a child process in
 * a 0700 directory of its own; its token lives in a 0600 file replaced
 * atomically at each rotation; messages go in on stdin as NDJSON with their
 * seq and its acks and nacks drive delivery; it is stopped with SIGTERM, then
 * SIGKILL; a dead host leaves no child behind; its environment holds none of
 * the host's secrets. Real control plane, real hosts, real child processes
 * (plain Node scripts that use nothing but their environment, token file,
 * stdin and stdout); time-driven steps on the shared fake clock.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentHost } from '../../agent-host/agent-host.js';
import { INHERITED_VARIABLES } from '../../agent-host/child-environment.js';
import { FileHostCredentialStore, MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import { AgentClient } from '../../agent-host/tools/agent-client.js';
import { fromFile } from '../../agent-host/tools/credential-source.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness, killStartedAgentProcesses, startedAgentPids, statusOf } from '../support/harness.js';
import { assertNoSecrets, JWT_SHAPE } from '../support/secrets.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const NODE = process.execPath;
const FIXTURE = fileURLToPath(new URL('../support/process-agent-fixture.mjs', import.meta.url));
const EXAMPLE = fileURLToPath(new URL('../../examples/process-agent.mjs', import.meta.url));
const AGENT_HOST_BIN = fileURLToPath(new URL('../../bin/agent-host.js', import.meta.url));
const GRACE_MS = 10_000;
const ROTATIONS = 100;

/** One parsed log record. */
type LogRecord = Record<string, unknown>;

/** The pid the host logged when it started `agentId`'s process (undefined before). */
function pidOf(harness: Harness, agentId: string): number | undefined {
  const record = harness.logs.records().find((r) => r.msg === 'agent process started' && r.agentId === agentId);
  return typeof record?.pid === 'number' ? record.pid : undefined;
}

/** How the host saw `pid` end, once it has. */
function exitOf(harness: Harness, pid: number): { code: number | null; signal: string | null } | undefined {
  const record = harness.logs.records().find((r: LogRecord) => r.msg === 'agent process exited' && r.pid === pid);
  return record === undefined ? undefined : { code: record.code as number | null, signal: record.signal as string | null };
}

/** The lines of `agentId`'s output the host logged from `stream`. */
function outputLines(harness: Harness, agentId: string, stream: 'stdout' | 'stderr'): string[] {
  return harness.logs
    .records()
    .filter((r) => r.msg === 'agent output' && r.agentId === agentId && r.stream === stream)
    .map((r) => r.line as string);
}

/**
 * Whether `pid` runs no more: no such process, or a zombie (exited, not yet
 * reaped by whoever adopted it: it runs no code and holds no file).
 */
function isGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** The pids of `parentPid`'s children whose command line mentions `needle` (Linux: from /proc). */
function childrenOf(parentPid: number, needle: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === parentPid && readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(needle)) found.push(Number(entry));
    } catch {
      // Gone while we looked.
    }
  }
  return found;
}

/** Dispatches a process agent (`node ...args`) onto `hostId` and waits for `host` to start it. */
async function dispatchProcess(harness: Harness, host: AgentHost, hostId: string, agentId: string, args: string[]): Promise<void> {
  const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === agentId);
  await call(harness.admin.dispatchAgent.bind(harness.admin), {
    agentId,
    name: agentId,
    hostId,
    hostLabels: [],
    spec: { kind: 'process', module: '', command: NODE, args, config: '' },
  });
  await started;
}

/** Sends text messages to `agentId` as the operator. */
async function send(harness: Harness, agentId: string, texts: string[]): Promise<void> {
  await call(harness.admin.sendMessages.bind(harness.admin), {
    agentId,
    messages: texts.map((text) => ({ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: '' })),
  });
}

describe('process agents', () => {
  let harness: Harness | undefined;
  let hostProcess: ChildProcess | undefined;
  const dirs: string[] = [];
  let savedUmask: number | undefined;
  let savedEnv: Record<string, string | undefined> | undefined;

  const tempDir = (): string => {
    const dir = mkdtempSync(join(tmpdir(), 'tether-proc-'));
    dirs.push(dir);
    return dir;
  };

  afterEach(async () => {
    if (hostProcess !== undefined && hostProcess.exitCode === null && hostProcess.signalCode === null) hostProcess.kill('SIGKILL');
    hostProcess = undefined;
    // Children first, so closing a host never waits out a grace period on the fake clock.
    killStartedAgentProcesses(harness);
    await harness?.close();
    harness = undefined;
    if (savedUmask !== undefined) process.umask(savedUmask);
    savedUmask = undefined;
    if (savedEnv !== undefined) {
      for (const [name, value] of Object.entries(savedEnv)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
    savedEnv = undefined;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it(`keeps the token in a 0600 file, replaced atomically: a reader in a tight loop never sees a partial token across ${ROTATIONS} rotations`, async () => {
    // Whatever the host's umask, the file is 0600 and the directories 0700 from the start.
    savedUmask = process.umask(0);
    harness = await Harness.start();
    const h = harness;
    const agentsDir = join(tempDir(), 'agents');
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: GRACE_MS });
    await dispatchProcess(h, host, hostId, 'reader', [FIXTURE, '--read-loop']);
    const dir = join(agentsDir, 'reader');
    const tokenPath = join(dir, 'token');
    await waitUntil(() => existsSync(join(dir, 'ready')), 'the reader to be ready');
    expect(statSync(agentsDir).mode & 0o777).toBe(0o700);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(tokenPath).mode & 0o777).toBe(0o600);

    // The test calls as the agent with what the file holds, read at each call.
    const client = new AgentClient({ target: h.target, source: fromFile(tokenPath) });
    try {
      const first = await client.whoAmI();
      expect(first).toMatchObject({ agentId: 'reader', generation: 1 });
      const inodes = [statSync(tokenPath).ino];
      for (let i = 0; i < ROTATIONS; i++) {
        const expected = (host.agentCredential('reader')?.generation ?? 0) + 1;
        const applied = nextEvent<{ agentId: string; generation: number }>(host.events, 'rotation-applied', (e) => e.agentId === 'reader' && e.generation === expected);
        const rotated = await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'reader' });
        expect(rotated.generation).toBe(expected);
        await applied;
        const info = statSync(tokenPath);
        expect(info.ino).not.toBe(inodes.at(-1));
        expect(info.mode & 0o777).toBe(0o600);
        inodes.push(info.ino);
        const me = await client.whoAmI();
        expect(me.generation).toBe(expected);
        h.clock.advance(1_000);
      }
      expect(inodes).toHaveLength(ROTATIONS + 1);
    } finally {
      client.close();
    }

    // What the reader saw, all along: a message makes it write a report, then ack.
    const acked = nextEvent<{ agentId: string; seq: number }>(h.cp.events, 'message-acked', (e) => e.agentId === 'reader' && e.seq === 1);
    await send(h, 'reader', ['report']);
    await acked;
    const report = JSON.parse(readFileSync(join(dir, 'report.json'), 'utf8')) as {
      reads: number;
      bad: number;
      problems: string[];
      generations: number;
      inodes: number;
      maxGeneration: number;
    };
    expect(report.problems).toEqual([]);
    expect(report.bad).toBe(0);
    expect(report.reads).toBeGreaterThan(0);
    // It read the first token before it said it was ready, and the last one for the report.
    expect(report.maxGeneration).toBe(ROTATIONS + 1);
    expect(report.generations).toBeGreaterThanOrEqual(2);
    expect(report.inodes).toBeGreaterThanOrEqual(2);
  });

  it("delivers on stdin with each seq; the agent's acks and nacks drive delivery, in order (a nack is re-sent, later messages wait)", async () => {
    harness = await Harness.start({ redeliveryMinDelayMs: 1_000, redeliveryMaxDelayMs: 1_000, maxDeliveryAttempts: 5 });
    const h = harness;
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir: join(tempDir(), 'agents'), stopGraceMs: GRACE_MS });
    // The example agent refuses a payload starting "retry" the first time it sees its seq.
    await dispatchProcess(h, host, hostId, 'mailer', [EXAMPLE]);
    const decisions = (): string[] =>
      outputLines(h, 'mailer', 'stderr').flatMap((line) => {
        const match = /seq (\d+) from operator, .*: (acked|refused)/.exec(line);
        return match === null ? [] : [`${match[1]} ${match[2]}`];
      });

    await send(h, 'mailer', ['first', 'retry second', 'third']);
    await waitUntil(
      () => h.logs.records().some((r) => r.msg === 'message refused; will re-send' && r.agentId === 'mailer' && r.seq === 2),
      'the control plane to record the refusal of seq 2',
    );
    expect(decisions()).toEqual(['1 acked', '2 refused']);
    expect(outputLines(h, 'mailer', 'stdout')).toEqual([]);

    // The re-send waits on the clock; seq 3, already at the host, waits behind seq 2.
    const allAcked = nextEvent<{ agentId: string; seq: number }>(h.cp.events, 'message-acked', (e) => e.agentId === 'mailer' && e.seq === 3);
    h.clock.advance(1_000);
    await allAcked;
    expect(decisions()).toEqual(['1 acked', '2 refused', '2 acked', '3 acked']);
    const pending = await call(h.admin.listMessages.bind(h.admin), { agentId: 'mailer', state: 'pending', pageSize: 0, pageToken: '' });
    expect(pending.messages).toEqual([]);
  });

  it('refuses a shared agents directory (1777): the agent fails saying why, nothing starts, the directory keeps its mode and sticky bit', async () => {
    harness = await Harness.start();
    const h = harness;
    const agentsDir = join(tempDir(), 'shared');
    mkdirSync(agentsDir);
    chmodSync(agentsDir, 0o1777);
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: GRACE_MS });
    const failed = nextEvent<{ agentId: string; state: string }>(h.cp.events, 'agent-state', (e) => e.agentId === 'squatted' && e.state === 'failed');
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'squatted',
      name: 'squatted',
      hostId,
      hostLabels: [],
      spec: { kind: 'process', module: '', command: NODE, args: [EXAMPLE], config: '' },
    });
    await failed;
    const agent = await call(h.admin.getAgent.bind(h.admin), { agentId: 'squatted' });
    expect(agent.agent?.detail).toContain(`the agents directory ${agentsDir} is writable by others (mode 1777)`);
    expect(statSync(agentsDir).mode & 0o7777).toBe(0o1777);
    expect(readdirSync(agentsDir)).toEqual([]);
    expect(host.agentIds()).toEqual([]);
    expect(startedAgentPids(h)).toEqual([]);
  });

  it('refuses at dispatch a command the host does not allow (FAILED_PRECONDITION), and starts nothing', async () => {
    harness = await Harness.start();
    const h = harness;
    const agentsDir = join(tempDir(), 'agents');
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: GRACE_MS });
    const started: string[] = [];
    host.events.on('agent-started', (e) => started.push(e.agentId));

    const refused = call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'sneaky',
      name: 'sneaky',
      hostId,
      hostLabels: [],
      spec: { kind: 'process', module: '', command: '/bin/sh', args: ['-c', 'echo pwned'], config: '' },
    });
    expect(await statusOf(refused)).toBe(grpc.status.FAILED_PRECONDITION);
    expect(await statusOf(call(h.admin.getAgent.bind(h.admin), { agentId: 'sneaky' }))).toBe(grpc.status.NOT_FOUND);

    // Not aimed at a host, it waits for one that allows it: none here does.
    const parked = await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'parked',
      name: 'parked',
      hostId: '',
      hostLabels: [],
      spec: { kind: 'process', module: '', command: '/bin/sh', args: ['-c', 'echo pwned'], config: '' },
    });
    expect(parked.agent?.state).toBe(AgentState.AGENT_STATE_PENDING);

    // An allowed one after them: the stream is ordered, so anything sent for the others came first.
    await dispatchProcess(h, host, hostId, 'allowed', [EXAMPLE]);
    expect(started).toEqual(['allowed']);
    expect(host.agentIds()).toEqual(['allowed']);
    expect(readdirSync(agentsDir)).toEqual(['allowed']);
    expect(startedAgentPids(h)).toHaveLength(1);
    const stillParked = await call(h.admin.getAgent.bind(h.admin), { agentId: 'parked' });
    expect(stillParked.agent?.state).toBe(AgentState.AGENT_STATE_PENDING);
  });

  it('checks its own allow-list whatever the control plane sends: a host restarted without the command fails the agent, starts nothing', async () => {
    harness = await Harness.start();
    const h = harness;
    const agentsDir = join(tempDir(), 'agents');
    const credentialStore = new MemoryHostCredentialStore();
    const { host: before, hostId } = await h.startHost('h', { credentialStore, allowedCommands: [NODE], agentsDir, stopGraceMs: GRACE_MS });
    await dispatchProcess(h, before, hostId, 'p1', [EXAMPLE]);
    // A host shutting down stops its agents; the control plane keeps them placed there, and
    // starts them again when the host is back without them.
    await before.close();
    const failed = nextEvent<{ agentId: string; state: string }>(h.cp.events, 'agent-state', (e) => e.agentId === 'p1' && e.state === 'failed');
    const after = AgentHost.start({
      target: h.target,
      clock: h.clock,
      logger: h.logs.logger,
      credentialStore,
      modules: new Map(),
      reconnectMinDelayMs: 10,
      reconnectMaxDelayMs: 50,
    });
    h.hosts.push(after);
    await failed;
    const agent = await call(h.admin.getAgent.bind(h.admin), { agentId: 'p1' });
    expect(agent.agent?.state).toBe(AgentState.AGENT_STATE_FAILED);
    expect(agent.agent?.detail).toMatch(/not allowed on this host/);
    expect(after.agentIds()).toEqual([]);
    expect(startedAgentPids(h)).toHaveLength(1);
  });

  it('stops a process with SIGTERM within the grace period, without the clock moving', async () => {
    harness = await Harness.start();
    const h = harness;
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir: join(tempDir(), 'agents'), stopGraceMs: GRACE_MS });
    await dispatchProcess(h, host, hostId, 'polite', [EXAMPLE]);
    const pid = pidOf(h, 'polite');
    expect(pid).toBeTypeOf('number');
    const startedAtMs = h.clock.now();
    const stopped = nextEvent<{ agentId: string }>(host.events, 'agent-stopped', (e) => e.agentId === 'polite');
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'polite', reason: 'test' });
    await stopped;
    const exit = exitOf(h, pid ?? 0);
    expect(exit).toBeDefined();
    // SIGTERM, or its stdin closing (it exits 0 then): either way, never SIGKILL.
    expect(exit?.signal === 'SIGTERM' || exit?.code === 0).toBe(true);
    expect(h.clock.now()).toBe(startedAtMs);
    expect(isGone(pid ?? 0)).toBe(true);
  });

  it('escalates to SIGKILL once the grace period has passed on the clock, for a child that ignores SIGTERM', async () => {
    harness = await Harness.start();
    const h = harness;
    const agentsDir = join(tempDir(), 'agents');
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: GRACE_MS });
    await dispatchProcess(h, host, hostId, 'stubborn', [FIXTURE, '--ignore-sigterm']);
    const dir = join(agentsDir, 'stubborn');
    await waitUntil(() => existsSync(join(dir, 'ready')), 'the child to install its SIGTERM handler');
    const pid = pidOf(h, 'stubborn') ?? 0;
    let isStopped = false;
    host.events.on('agent-stopped', (e) => {
      if (e.agentId === 'stubborn') isStopped = true;
    });
    const stopped = nextEvent<{ agentId: string }>(host.events, 'agent-stopped', (e) => e.agentId === 'stubborn');
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'stubborn', reason: 'test' });
    await waitUntil(() => existsSync(join(dir, 'sigterm')), 'the child to get SIGTERM');
    // It got SIGTERM (and its stdin closed) and lives on; the host waits on the clock.
    expect(isGone(pid)).toBe(false);
    expect(isStopped).toBe(false);
    expect(existsSync(join(dir, 'token'))).toBe(true);
    h.clock.advance(GRACE_MS);
    await stopped;
    expect(exitOf(h, pid)).toEqual({ code: null, signal: 'SIGKILL' });
    expect(isGone(pid)).toBe(true);
    // Stopped: its token file goes with it.
    expect(existsSync(join(dir, 'token'))).toBe(false);
  });

  it.runIf(process.platform === 'linux')('leaves no child running when the host process is killed with SIGKILL', async () => {
    harness = await Harness.start();
    const h = harness;
    const dataDir = tempDir();
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'doomed', joinTtlMs: 0 });
    const connected = nextEvent<{ hostId: string }>(h.cp.events, 'host-connected', (e) => e.hostId === enrolled.hostId);
    const output: string[] = [];
    const child = spawn(NODE, [AGENT_HOST_BIN, '--server', h.target, '--data-dir', dataDir, '--allow-command', NODE, '--log-level', 'info'], {
      env: { ...process.env, TETHER_JOIN_TOKEN: enrolled.joinToken },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    hostProcess = child;
    child.stdout.on('data', (chunk: Buffer) => output.push(chunk.toString('utf8')));
    child.stderr.on('data', (chunk: Buffer) => output.push(chunk.toString('utf8')));
    const hostExited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await connected;

    const running = (agentId: string): Promise<unknown> =>
      nextEvent<{ agentId: string; state: string }>(h.cp.events, 'agent-state', (e) => e.agentId === agentId && e.state === 'running');
    const agentIds = ['orphan-1', 'orphan-2'];
    for (const agentId of agentIds) {
      const isRunning = running(agentId);
      await call(h.admin.dispatchAgent.bind(h.admin), {
        agentId,
        name: agentId,
        hostId: enrolled.hostId,
        hostLabels: [],
        spec: { kind: 'process', module: '', command: NODE, args: [EXAMPLE], config: '' },
      });
      await isRunning;
    }
    const pids = childrenOf(child.pid ?? 0, EXAMPLE);
    expect(pids).toHaveLength(agentIds.length);
    for (const agentId of agentIds) expect(existsSync(join(dataDir, 'agents', agentId, 'token'))).toBe(true);
    expect(pids.every((pid) => !isGone(pid))).toBe(true);

    child.kill('SIGKILL');
    await hostExited;
    // Their stdin closed with the host: each exits by itself.
    await waitUntil(() => pids.every(isGone), 'every child of the killed host to be gone');
    assertNoSecrets(output.join(''), [enrolled.joinToken], "the host's output");
  });

  it("gives the child its token file path, never the host's secrets, and redacts a token it prints", async () => {
    harness = await Harness.start();
    const h = harness;
    const dataDir = tempDir();
    const agentsDir = join(dataDir, 'agents');
    const credentialStore = new FileHostCredentialStore(dataDir);
    const { host, hostId, joinToken } = await h.startHost('h', { credentialStore, allowedCommands: [NODE], agentsDir, stopGraceMs: GRACE_MS });
    const joinTokenFile = join(dataDir, 'join-token');
    const secrets: Record<string, string> = {
      TETHER_ADMIN_TOKEN: h.adminToken,
      TETHER_JOIN_TOKEN: joinToken,
      TETHER_JOIN_TOKEN_FILE: joinTokenFile,
      TETHER_HOST_DATA_DIR: dataDir,
      SOME_OTHER_SECRET: 'shh-this-is-not-for-agents',
    };
    // The host's own environment, as `agent-host` would have it.
    savedEnv = Object.fromEntries(Object.keys(secrets).map((name) => [name, process.env[name]]));
    Object.assign(process.env, secrets);

    await dispatchProcess(h, host, hostId, 'curious', [FIXTURE, '--dump-env']);
    const dir = join(agentsDir, 'curious');
    await waitUntil(() => existsSync(join(dir, 'ready')), 'the child to dump its environment');
    const env = JSON.parse(readFileSync(join(dir, 'env.json'), 'utf8')) as Record<string, string>;

    expect(env).toMatchObject({
      TETHER_TOKEN_FILE: join(dir, 'token'),
      TETHER_AGENT_ID: 'curious',
      TETHER_AGENT_DIR: dir,
      TETHER_SERVER: h.target,
    });
    expect(env.PATH).toBe(process.env.PATH);
    const allowed = new Set([...INHERITED_VARIABLES, 'TETHER_TOKEN_FILE', 'TETHER_AGENT_ID', 'TETHER_AGENT_NAME', 'TETHER_AGENT_INCARNATION', 'TETHER_AGENT_DIR', 'TETHER_SERVER']);
    // Nothing but the allow-list and what the host sets about the agent.
    expect(Object.keys(env).filter((name) => !allowed.has(name))).toEqual([]);
    for (const name of Object.keys(secrets)) expect(env[name]).toBeUndefined();
    assertNoSecrets(JSON.stringify(env), [...Object.values(secrets).filter((v) => v !== dataDir), credentialStore.path], "the child's environment");
    // The token is in the file, and the file only.
    expect(readFileSync(env.TETHER_TOKEN_FILE ?? '', 'utf8')).toMatch(JWT_SHAPE);

    // It printed its token on both streams; the host logged both lines, redacted.
    await waitUntil(() => outputLines(h, 'curious', 'stdout').length > 0 && outputLines(h, 'curious', 'stderr').length > 0, 'its output in the log');
    expect(outputLines(h, 'curious', 'stdout')).toEqual(['my token is [redacted-jwt]']);
    expect(outputLines(h, 'curious', 'stderr')).toEqual(['my token is [redacted-jwt]']);
    assertNoSecrets(h.logs.text(), [h.adminToken, joinToken], 'the captured logs');
  });

  it("reports the process's own exit: status 0 as exited, anything else as failed, with the status in the detail", async () => {
    harness = await Harness.start();
    const h = harness;
    const agentsDir = join(tempDir(), 'agents');
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: GRACE_MS });
    const cases = [
      { agentId: 'done', how: 'exit 0', state: AgentState.AGENT_STATE_EXITED, detail: 'exited with code 0' },
      { agentId: 'broken', how: 'exit 3', state: AgentState.AGENT_STATE_FAILED, detail: 'exited with code 3' },
      { agentId: 'killed', how: 'SIGKILL', state: AgentState.AGENT_STATE_FAILED, detail: 'killed by signal SIGKILL' },
    ];
    for (const c of cases) {
      await dispatchProcess(h, host, hostId, c.agentId, [FIXTURE]);
      await waitUntil(() => existsSync(join(agentsDir, c.agentId, 'ready')), `${c.agentId} to be ready`);
      const ended = nextEvent<{ agentId: string; state: string; detail: string }>(host.events, 'agent-ended', (e) => e.agentId === c.agentId);
      const cpState = nextEvent<{ agentId: string; state: string }>(h.cp.events, 'agent-state', (e) => e.agentId === c.agentId && (e.state === 'exited' || e.state === 'failed'));
      if (c.how === 'SIGKILL') {
        process.kill(pidOf(h, c.agentId) ?? 0, 'SIGKILL');
      } else {
        // It acks, then exits: the ack written just before the exit still counts.
        const acked = nextEvent<{ agentId: string; seq: number }>(h.cp.events, 'message-acked', (e) => e.agentId === c.agentId && e.seq === 1);
        await send(h, c.agentId, [c.how]);
        await acked;
      }
      expect((await ended).detail).toBe(c.detail);
      await cpState;
      const agent = await call(h.admin.getAgent.bind(h.admin), { agentId: c.agentId });
      expect(agent.agent?.state).toBe(c.state);
      expect(agent.agent?.detail).toBe(c.detail);
      expect(host.agentIds()).not.toContain(c.agentId);
      expect(existsSync(join(agentsDir, c.agentId, 'token'))).toBe(false);
    }
  });

  it('reports an exit that happened while the stream was down in its next Hello, so the agent is not started again', async () => {
    harness = await Harness.start();
    const h = harness;
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    try {
      const agentsDir = join(tempDir(), 'agents');
      const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: GRACE_MS, target: `127.0.0.1:${proxy.port}` });
      await dispatchProcess(h, host, hostId, 'short-lived', [FIXTURE]);
      await waitUntil(() => existsSync(join(agentsDir, 'short-lived', 'ready')), 'the agent to be ready');

      const lost = nextEvent(host.events, 'disconnected');
      await h.stopControlPlane();
      await lost;
      const ended = nextEvent<{ agentId: string; state: string }>(host.events, 'agent-ended', (e) => e.agentId === 'short-lived');
      process.kill(pidOf(h, 'short-lived') ?? 0, 'SIGKILL');
      expect((await ended).state).toBe('failed');

      await h.startControlPlane();
      proxy.setTarget(h.cp.port);
      let isConnected = false;
      host.events.once('connected', () => {
        isConnected = true;
      });
      // The reconnect backoff sleeps on the fake clock.
      await advanceUntil(h.clock, 100, () => isConnected, 'the host to reconnect');
      await waitUntil(async () => (await call(h.admin.getAgent.bind(h.admin), { agentId: 'short-lived' })).agent?.state === AgentState.AGENT_STATE_FAILED, 'the control plane to learn of the exit');
      // Started once, never again.
      expect(h.logs.records().filter((r) => r.msg === 'agent process started' && r.agentId === 'short-lived')).toHaveLength(1);
      expect(host.agentIds()).not.toContain('short-lived');
    } finally {
      await proxy.close();
    }
  });
});
