/**
 * Lost hosts with real processes (issue 15, Show 2 and 3): a real `agent-host`
 * process killed with SIGKILL, or stopped with SIGSTOP while its process agents
 * (its children, in process groups of their own) keep calling AgentService with
 * the tokens in their token files; and an in-process host blackholed by the
 * TCP fault proxy. Each time the ensured agents run on another host under a new
 * incarnation, and the control plane's log of every accepted agent token
 * (`agent-verified`) shows no two incarnations of one agent valid at
 * overlapping times.
 *
 * The control plane runs in this process on a fake clock that starts at the
 * real time, so the lost-host grace and the old tokens' expiry pass by
 * advancing it; the `agent-host` children run on the real clock, which moves
 * only a few seconds meanwhile (far less than their own self-fence deadline:
 * what stops their stale copies is the control plane, not a fence of their
 * own). A SIGSTOPped host's stream is noticed dead by the control plane's
 * transport keepalive, which runs on the real clock (short here); every wait
 * is bounded by the suite's hang bound, never by those intervals.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AGENT_PID_FILE } from '../../agent-host/stale-agents.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { advanceUntil } from '../support/advance-until.js';
import { withinHangBound } from '../support/control-plane-process.js';
import { FakeClock } from '../support/fake-clock.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { bearer, call, Harness, statusOf, type HarnessOptions } from '../support/harness.js';
import { assertNoSecrets } from '../support/secrets.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const NODE = process.execPath;
const FIXTURE = fileURLToPath(new URL('../support/process-agent-fixture.mjs', import.meta.url));
const AGENT_HOST_BIN = fileURLToPath(new URL('../../bin/agent-host.js', import.meta.url));
const AGENT_TTL_MS = 60_000;
const TOLERANCE_MS = 1_000;
const HARNESS: HarnessOptions = { agentTokenTtlMs: AGENT_TTL_MS, clockToleranceMs: TOLERANCE_MS, pingIntervalMs: 2_000 };
/** Transport keepalive of the control plane, on the real clock: how it notices a host that stopped answering. */
const KEEPALIVE = { keepaliveTimeMs: 1_000, keepaliveTimeoutMs: 1_000 } as const;

/** A process agent running the fixture with `flags`. */
function processSpec(...flags: string[]): { kind: string; module: string; command: string; args: string[]; config: string } {
  return { kind: 'process', module: '', command: NODE, args: [FIXTURE, ...flags], config: '' };
}

/** What the fixture's `--call-loop` counted so far in process `pid` (that of `agentDir`'s latest copy by default; zeros before its first call). */
function callsOf(agentDir: string, pid = readyPid(agentDir)): { ok: number; refused: number; acceptedIncarnations: number[]; last: string } {
  try {
    return JSON.parse(readFileSync(join(agentDir, `calls-${pid ?? 0}.json`), 'utf8')) as { ok: number; refused: number; acceptedIncarnations: number[]; last: string };
  } catch {
    return { ok: 0, refused: 0, acceptedIncarnations: [], last: '' };
  }
}

/** The messages the fixture's `--report-each` took, in the order it took them. */
function seenBy(agentDir: string): string[] {
  try {
    return (JSON.parse(readFileSync(join(agentDir, 'seen.json'), 'utf8')) as { text: string }[]).map((m) => m.text);
  } catch {
    return [];
  }
}

/** The pid the fixture wrote once set up (undefined before). */
function readyPid(agentDir: string): number | undefined {
  try {
    return Number(readFileSync(join(agentDir, 'ready'), 'utf8'));
  } catch {
    return undefined;
  }
}

/** Whether `pid` runs no more: no such process, or a zombie. */
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

/** One entry of the log, in the order the control plane emitted it. */
type Entry =
  | { kind: 'verified'; order: number; agentId: string; hostId: string; incarnation: number; atMs: number }
  | { kind: 'issued'; order: number; agentId: string; hostId: string; incarnation: number; atMs: number };

/**
 * The control plane's log of every accepted agent token (`agent-verified`) and
 * every agent credential issued (`credential-issued`), each numbered in the
 * order the control plane emitted it (one process, so a true order) and
 * stamped with its clock.
 */
class VerificationLog {
  readonly entries: Entry[] = [];
  #order = 0;

  constructor(h: Harness) {
    h.cp.events.on('agent-verified', (e) => {
      this.entries.push({ kind: 'verified', order: this.#order++, agentId: e.agentId, hostId: e.hostId, incarnation: e.incarnation, atMs: e.atMs });
    });
    h.cp.events.on('credential-issued', (e) => {
      if (e.agentId === '') return;
      this.entries.push({ kind: 'issued', order: this.#order++, agentId: e.agentId, hostId: e.hostId, incarnation: e.incarnation, atMs: h.clock.now() });
    });
  }

  /** A number after every entry so far. */
  mark(): number {
    return this.#order++;
  }

  verified(agentId: string, incarnation?: number): Extract<Entry, { kind: 'verified' }>[] {
    return this.entries.filter((e): e is Extract<Entry, { kind: 'verified' }> => e.kind === 'verified' && e.agentId === agentId && (incarnation === undefined || e.incarnation === incarnation));
  }

  /**
   * Every way `agentId`'s incarnations overlapped, empty when none did. For
   * each incarnation N, its accepted uses span [first, last]; for N < M, N's
   * span must end before M's begins: strictly in emission order (the order in
   * which the control plane accepted them), and no later on its clock (which
   * may not move between the two when nothing advances it). And no token of N
   * may be accepted after M's first credential was issued.
   */
  overlaps(agentId: string): string[] {
    const problems: string[] = [];
    const spans = new Map<number, { first: Entry; last: Entry }>();
    for (const e of this.verified(agentId)) {
      const span = spans.get(e.incarnation);
      if (span === undefined) spans.set(e.incarnation, { first: e, last: e });
      else span.last = e;
    }
    const incarnations = [...spans.keys()].sort((a, b) => a - b);
    for (const n of incarnations) {
      for (const m of incarnations) {
        if (m <= n) continue;
        const older = spans.get(n) as { first: Entry; last: Entry };
        const newer = spans.get(m) as { first: Entry; last: Entry };
        if (older.last.order >= newer.first.order || older.last.atMs > newer.first.atMs) {
          problems.push(`${agentId}: incarnation ${n} used until ${older.last.atMs} (#${older.last.order}), incarnation ${m} from ${newer.first.atMs} (#${newer.first.order})`);
        }
      }
    }
    for (const issued of this.entries.filter((e) => e.kind === 'issued' && e.agentId === agentId)) {
      const firstIssued = this.entries.find((e) => e.kind === 'issued' && e.agentId === agentId && e.incarnation === issued.incarnation);
      if (firstIssued !== issued) continue;
      for (const late of this.verified(agentId).filter((e) => e.incarnation < issued.incarnation && (e.order > issued.order || e.atMs > issued.atMs))) {
        problems.push(`${agentId}: a token of incarnation ${late.incarnation} accepted at ${late.atMs} (#${late.order}), after incarnation ${issued.incarnation}'s first credential was issued at ${issued.atMs} (#${issued.order})`);
      }
    }
    return problems;
  }
}

describe('lost hosts, with real processes', () => {
  let harness: Harness | undefined;
  const proxies: FaultProxy[] = [];
  const children: ChildProcess[] = [];
  const strays: number[] = [];
  const dirs: string[] = [];

  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGCONT');
        child.kill('SIGKILL');
        await withinHangBound(exited, 'an agent-host child to exit');
      }
    }
    // Process agents that outlived their host on purpose: their whole group.
    for (const pid of strays.splice(0)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    for (const p of proxies.splice(0)) await p.close();
    await harness?.close();
    harness = undefined;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  function tempDir(): string {
    const dir = mkdtempSync(join(tmpdir(), 'tether-lost-'));
    dirs.push(dir);
    return dir;
  }

  /** Starts `agent-host` on `dataDir` (with a join token the first time); resolves once the control plane has its stream. */
  async function spawnHost(h: Harness, hostId: string, dataDir: string, joinToken?: string): Promise<{ child: ChildProcess; output: string[]; exited: Promise<void> }> {
    const connected = nextEvent<{ hostId: string }>(h.cp.events, 'host-connected', (e) => e.hostId === hostId);
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.TETHER_JOIN_TOKEN;
    if (joinToken !== undefined) env.TETHER_JOIN_TOKEN = joinToken;
    const child = spawn(NODE, [AGENT_HOST_BIN, '--server', h.target, '--data-dir', dataDir, '--allow-command', NODE, '--stop-grace', '2s', '--log-level', 'info'], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    const output: string[] = [];
    child.stdout?.on('data', (chunk: Buffer) => output.push(chunk.toString('utf8')));
    child.stderr?.on('data', (chunk: Buffer) => output.push(chunk.toString('utf8')));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await connected;
    return { child, output, exited };
  }

  async function agentInfo(h: Harness, agentId: string): Promise<{ state: AgentState; incarnation: number; hostId: string }> {
    const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId });
    if (agent === undefined) throw new Error(`no agent ${agentId}`);
    return agent;
  }

  async function ensure(h: Harness, agentId: string, spec: ReturnType<typeof processSpec>): Promise<void> {
    await call(h.admin.ensureAgent.bind(h.admin), { agentId, name: '', hostId: '', hostLabels: [], spec, update: false });
  }

  async function send(h: Harness, agentId: string, texts: string[]): Promise<void> {
    await call(h.admin.sendMessages.bind(h.admin), {
      agentId,
      messages: texts.map((text) => ({ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: '' })),
    });
  }

  async function runningOn(h: Harness, agentId: string, hostId: string): Promise<boolean> {
    const agent = await agentInfo(h, agentId);
    return agent.state === AgentState.AGENT_STATE_RUNNING && agent.hostId === hostId;
  }

  async function hostLoad(h: Harness, hostId: string): Promise<number | undefined> {
    const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: 0, pageToken: '' });
    return listed.hosts.find((x) => x.hostId === hostId)?.agents;
  }

  it('Show 2: a killed agent-host process: its ensured agents run elsewhere with their waiting mail in order, old tokens refused; back, it stops what it left running and runs none of them', async () => {
    harness = await Harness.start({ ...HARNESS, clock: new FakeClock(Date.now()) });
    const h = harness;
    const log = new VerificationLog(h);
    const dirA = tempDir();
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'killed', joinTtlMs: 0 });
    const hostA = enrolled.hostId;
    const first = await spawnHost(h, hostA, dirA, enrolled.joinToken);
    // `mailbox` takes mail and calls; `stubborn` calls and outlives its host (it ignores the end of its stdin).
    await ensure(h, 'mailbox', processSpec('--report-each', '--call-loop'));
    await ensure(h, 'stubborn', processSpec('--call-loop', '--ignore-sigterm'));
    const agentIds = ['mailbox', 'stubborn'];
    const onA = (agentId: string): string => join(dirA, 'agents', agentId);
    for (const agentId of agentIds) {
      await waitUntil(() => runningOn(h, agentId, hostA), `${agentId} running on the host process`);
      await waitUntil(() => callsOf(onA(agentId)).ok > 0, `${agentId}'s calls accepted on the host process`);
    }
    const stubbornPid = readyPid(onA('stubborn')) ?? 0;
    strays.push(stubbornPid);
    const mailboxPid = readyPid(onA('mailbox')) ?? 0;
    await send(h, 'mailbox', ['m1']);
    await waitUntil(() => seenBy(onA('mailbox')).length === 1, 'm1 taken on the host process');
    const old = new Map<string, { incarnation: number; token: string }>();
    for (const agentId of agentIds) {
      old.set(agentId, { incarnation: (await agentInfo(h, agentId)).incarnation, token: readFileSync(join(onA(agentId), 'token'), 'utf8').trim() });
    }
    const dirB = tempDir();
    const { host: b, hostId: hostB } = await h.startHost('spare', { allowedCommands: [NODE], agentsDir: join(dirB, 'agents'), stopGraceMs: 0, isSelfFenceEnabled: true });
    const onB = (agentId: string): string => join(dirB, 'agents', agentId);

    const gone = nextEvent<{ hostId: string }>(h.cp.events, 'host-disconnected', (e) => e.hostId === hostA);
    first.child.kill('SIGKILL');
    await first.exited;
    await gone;
    // Its well-behaved agent ends with its stdin; the stubborn one goes on calling with its token file.
    await waitUntil(() => isGone(mailboxPid), 'the killed host\'s mailbox process to end');
    expect(isGone(stubbornPid)).toBe(false);
    await send(h, 'mailbox', ['m2', 'm3', 'm4']);

    const lost: string[] = [];
    h.cp.events.on('host-lost', (e) => lost.push(e.hostId));
    await advanceUntil(h.clock, 1_000, async () => (await runningOn(h, 'mailbox', hostB)) && (await runningOn(h, 'stubborn', hostB)), 'both agents running on the spare host');
    expect(lost).toEqual([hostA]);
    for (const agentId of agentIds) {
      expect((await agentInfo(h, agentId)).incarnation).toBeGreaterThan(old.get(agentId)?.incarnation ?? Infinity);
      await waitUntil(() => callsOf(onB(agentId)).ok > 0, `${agentId}'s calls accepted on the spare host`);
    }
    expect(b.agentIds().sort()).toEqual(agentIds);
    // The spare host's stubborn copy ignores SIGTERM, and its stop grace runs on the fake clock: killed at cleanup.
    strays.push(readyPid(onB('stubborn')) ?? 0);
    // The mail that waited follows it, in order; m1, taken on the killed host, is not given again.
    await waitUntil(() => seenBy(onB('mailbox')).length === 3, 'm2..m4 taken on the spare host');
    expect(seenBy(onB('mailbox'))).toEqual(['m2', 'm3', 'm4']);
    // Every token of the old incarnations is refused; the stubborn copy's calls are refused too.
    const api = h.agentClient();
    for (const agentId of agentIds) {
      expect(await statusOf(call(api.heartbeat.bind(api), { agentId }, bearer(old.get(agentId)?.token ?? '')))).toBe(grpc.status.UNAUTHENTICATED);
    }
    const refusedBefore = callsOf(onA('stubborn'), stubbornPid).refused;
    await waitUntil(() => callsOf(onA('stubborn'), stubbornPid).refused > refusedBefore + 5, 'the stubborn copy to be refused again');

    // The killed host comes back on the same data directory: it is told of no agent, runs none, and gets no token.
    const returnedAt = log.mark();
    const second = await spawnHost(h, hostA, dirA);
    expect(await hostLoad(h, hostA)).toBe(0);
    expect(h.cp.connectedHosts).toBe(2);
    for (const agentId of agentIds) expect(await runningOn(h, agentId, hostB)).toBe(true);
    // What its earlier run left is gone: the stubborn copy stopped, the old token files deleted.
    await waitUntil(() => isGone(stubbornPid), 'the stubborn copy to be stopped by the returned host');
    for (const agentId of agentIds) expect(existsSync(join(onA(agentId), 'token'))).toBe(false);
    // Since it came back, nothing was issued to it or accepted from it.
    expect(log.entries.filter((e) => e.order > returnedAt && e.hostId === hostA)).toEqual([]);

    expect(callsOf(onA('stubborn'), stubbornPid).acceptedIncarnations).toEqual([old.get('stubborn')?.incarnation]);
    // The verification log: the old incarnations were used, then never again once fenced; no overlap.
    for (const agentId of agentIds) {
      const incarnation = old.get(agentId)?.incarnation ?? 0;
      expect(log.verified(agentId, incarnation).length).toBeGreaterThan(0);
      expect(log.verified(agentId).some((e) => e.incarnation > incarnation)).toBe(true);
      expect(log.overlaps(agentId)).toEqual([]);
    }
    assertNoSecrets(first.output.join('') + second.output.join(''), [enrolled.joinToken, ...[...old.values()].map((o) => o.token)], "the host's output");
  });

  it('Show 2: a copy that outlived its killed host is stopped when the host returns and starts the agent again in its directory, and never acts with the new token', async () => {
    harness = await Harness.start({ ...HARNESS, clock: new FakeClock(Date.now()) });
    const h = harness;
    const log = new VerificationLog(h);
    const dir = tempDir();
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'comes-back', joinTtlMs: 0 });
    const first = await spawnHost(h, enrolled.hostId, dir, enrolled.joinToken);
    await ensure(h, 'stubborn', processSpec('--call-loop', '--ignore-sigterm'));
    const agentDir = join(dir, 'agents', 'stubborn');
    await waitUntil(() => runningOn(h, 'stubborn', enrolled.hostId), 'the agent running');
    await waitUntil(() => callsOf(agentDir).ok > 0, 'its calls accepted');
    const stalePid = readyPid(agentDir) ?? 0;
    strays.push(stalePid);
    const oldIncarnation = (await agentInfo(h, 'stubborn')).incarnation;

    // Killed; its stubborn agent outlives it, still calling with the token file in its directory.
    const gone = nextEvent<{ hostId: string }>(h.cp.events, 'host-disconnected', (e) => e.hostId === enrolled.hostId);
    first.child.kill('SIGKILL');
    await first.exited;
    await gone;
    expect(isGone(stalePid)).toBe(false);

    // Back within the grace: the control plane starts the agent there again, under a new incarnation, in the same directory.
    const second = await spawnHost(h, enrolled.hostId, dir);
    await waitUntil(async () => (await runningOn(h, 'stubborn', enrolled.hostId)) && (await agentInfo(h, 'stubborn')).incarnation > oldIncarnation, 'the agent started again');
    await waitUntil(() => (readyPid(agentDir) ?? stalePid) !== stalePid, 'the new copy set up');
    const freshPid = readyPid(agentDir) ?? 0;
    strays.push(freshPid);
    await waitUntil(() => callsOf(agentDir, freshPid).ok > 0, "the new copy's calls accepted");
    // The stale copy never has a call accepted with anything but its own (old) incarnation's token, and is stopped.
    const calledBefore = callsOf(agentDir, stalePid);
    await waitUntil(() => {
      const now = callsOf(agentDir, stalePid);
      return isGone(stalePid) || now.ok + now.refused > calledBefore.ok + calledBefore.refused + 5;
    }, 'the stale copy to be stopped or to call a few more times');
    expect(callsOf(agentDir, stalePid).acceptedIncarnations).toEqual([oldIncarnation]);
    await waitUntil(() => isGone(stalePid), 'the stale copy to be stopped');
    expect(log.overlaps('stubborn')).toEqual([]);
    assertNoSecrets(first.output.join('') + second.output.join(''), [enrolled.joinToken], "the host's output");
  });

  it('a host starting a process agent stops a copy an earlier run left in its directory before writing the new token there', async () => {
    harness = await Harness.start(HARNESS);
    const h = harness;
    const agentsDir = join(tempDir(), 'agents');
    const agentDir = join(agentsDir, 'leftover');
    mkdirSync(agentDir, { recursive: true, mode: 0o700 });
    // As an earlier run of the host left it (killed before it could stop it): running, recorded, calling with the token file.
    const stale = spawn(NODE, [FIXTURE, '--call-loop', '--ignore-sigterm'], {
      cwd: agentDir,
      env: { PATH: process.env.PATH ?? '', TETHER_AGENT_ID: 'leftover', TETHER_AGENT_DIR: agentDir, TETHER_TOKEN_FILE: join(agentDir, 'token'), TETHER_SERVER: h.target },
      stdio: 'ignore',
      detached: true,
    });
    children.push(stale);
    const stalePid = stale.pid ?? 0;
    writeFileSync(join(agentDir, AGENT_PID_FILE), `${stalePid}\n`, { mode: 0o600 });
    await waitUntil(() => callsOf(agentDir, stalePid).refused > 0, 'the stale copy calling (refused: no token yet)');

    const { host, hostId } = await h.startHost('again', { allowedCommands: [NODE], agentsDir, stopGraceMs: 0 });
    await ensure(h, 'leftover', processSpec('--call-loop'));
    await waitUntil(() => runningOn(h, 'leftover', hostId), 'the agent running');
    await waitUntil(() => (readyPid(agentDir) ?? stalePid) !== stalePid && callsOf(agentDir).ok > 0, "the new copy's calls accepted");
    const calledBefore = callsOf(agentDir, stalePid);
    await waitUntil(() => {
      const now = callsOf(agentDir, stalePid);
      return stale.exitCode !== null || stale.signalCode !== null || now.ok + now.refused > calledBefore.ok + calledBefore.refused + 5;
    }, 'the stale copy to be stopped or to call a few more times');
    expect(callsOf(agentDir, stalePid).acceptedIncarnations).toEqual([]);
    await waitUntil(() => stale.signalCode !== null, 'the stale copy to be killed');
    expect(stale.signalCode).toBe('SIGKILL');
    expect(host.agentIds()).toEqual(['leftover']);
  });

  it('a host back with many stale copies is told to stop each of them on one stream: copies moved away are no protocol violation', async () => {
    // A budget of one violation: two stale copies reported as violations would end the stream.
    harness = await Harness.start({ ...HARNESS, violationBudget: 1 });
    const h = harness;
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    // It does not fence itself (as a frozen host cannot): its copies are still there when it is back.
    const a = await h.startHost('stale', { target: proxy.target, isSelfFenceEnabled: false });
    const agentIds = ['st-1', 'st-2', 'st-3', 'st-4'];
    for (const agentId of agentIds) await call(h.admin.ensureAgent.bind(h.admin), { agentId, name: '', hostId: '', hostLabels: [], spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' }, update: false });
    await waitUntil(() => a.host.agentIds().length === agentIds.length, 'the agents running on the host');
    const b = await h.startHost('spare');
    proxy.blackhole();
    proxy.cutAll();
    await waitUntil(() => h.cp.connectedHosts === 1, 'the control plane to see the host gone');
    await advanceUntil(h.clock, 1_000, async () => {
      for (const agentId of agentIds) if (!(await runningOn(h, agentId, b.hostId))) return false;
      return true;
    }, 'the agents running on the spare host');
    expect(a.host.agentIds().sort()).toEqual(agentIds);

    // What the host sees from its first stream back on.
    const seen: string[] = [];
    a.host.events.on('connected', () => seen.push('connected'));
    a.host.events.on('disconnected', (e) => {
      if (seen.length > 0) seen.push(`disconnected: ${e.details}`);
    });
    const stoppedReported: string[] = [];
    h.cp.events.on('reject', (e) => seen.push(`reject ${e.what} ${e.agentId}`));
    a.host.events.on('agent-stopped', (e) => stoppedReported.push(e.agentId));
    proxy.heal();
    await advanceUntil(h.clock, 10, () => a.host.agentIds().length === 0, 'every stale copy stopped');
    expect(stoppedReported.sort()).toEqual(agentIds);
    // Each copy's `stopped` reaches the control plane: taken as the end of a stale copy, or refused as a violation.
    const staleEnds = (): number => h.logs.records().filter((r) => r.msg === 'a stale copy ended' && r.hostId === a.hostId).length;
    await waitUntil(() => staleEnds() === agentIds.length || seen.length > 1, "the copies' ends read by the control plane");
    expect(seen).toEqual(['connected']);
    expect(a.host.state).toBe('connected');
    for (const agentId of agentIds) expect(await runningOn(h, agentId, b.hostId)).toBe(true);
  });

  it('Show 3: a host blackholed past the grace fences itself (agents stopped, token files gone) before its agents start elsewhere', async () => {
    harness = await Harness.start(HARNESS);
    const h = harness;
    const log = new VerificationLog(h);
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    const dirA = tempDir();
    const a = await h.startHost('cut-off', { target: proxy.target, allowedCommands: [NODE], agentsDir: join(dirA, 'agents'), stopGraceMs: 0, isSelfFenceEnabled: true });
    await ensure(h, 'islander', processSpec('--call-loop'));
    await waitUntil(() => runningOn(h, 'islander', a.hostId), 'the agent running on the cut-off host');
    const onA = join(dirA, 'agents', 'islander');
    await waitUntil(() => callsOf(onA).ok > 0, 'its calls accepted');
    const pid = readyPid(onA) ?? 0;
    const oldIncarnation = (await agentInfo(h, 'islander')).incarnation;
    const dirB = tempDir();
    const b = await h.startHost('spare', { allowedCommands: [NODE], agentsDir: join(dirB, 'agents'), stopGraceMs: 0, isSelfFenceEnabled: true });

    const order: string[] = [];
    let tokenFileAtFence: boolean | undefined;
    a.host.events.on('self-fenced', () => {
      order.push(`fenced at ${h.clock.now()} #${log.mark()}`);
      tokenFileAtFence = existsSync(join(onA, 'token'));
    });
    b.host.events.on('agent-started', (e) => order.push(`started ${e.agentId} at ${h.clock.now()} #${log.mark()}`));
    proxy.blackhole();
    proxy.cutAll();
    await waitUntil(() => h.cp.connectedHosts === 1, 'the control plane to see the host gone');
    await advanceUntil(h.clock, 500, () => runningOn(h, 'islander', b.hostId), 'the agent running on the spare host');

    // Fenced first: its process ended and its token file deleted, on its own, with no word from the control plane.
    expect(order).toHaveLength(2);
    expect(order[0]).toMatch(/^fenced/);
    expect(order[1]).toMatch(/^started islander/);
    const at = order.map((o) => Number(/at (\d+)/.exec(o)?.[1]));
    expect(at[0]).toBeLessThan(at[1] ?? 0);
    expect(tokenFileAtFence).toBe(false);
    expect(a.host.agentIds()).toEqual([]);
    await waitUntil(() => isGone(pid), 'the fenced process to be gone');
    // Fenced before the control plane issued the new incarnation anything.
    const fencedOrder = Number(/#(\d+)/.exec(order[0] ?? '')?.[1]);
    const firstNew = log.entries.find((e) => e.kind === 'issued' && e.agentId === 'islander' && e.incarnation > oldIncarnation);
    expect(firstNew?.order).toBeGreaterThan(fencedOrder);
    await waitUntil(() => callsOf(join(dirB, 'agents', 'islander')).ok > 0, 'the new copy\'s calls accepted');
    expect(log.verified('islander', oldIncarnation).length).toBeGreaterThan(0);
    expect(log.overlaps('islander')).toEqual([]);
  });

  it('Show 3: a SIGSTOPped agent-host whose process agents keep calling: fenced, started elsewhere, and stopped when it resumes; no overlap', async () => {
    harness = await Harness.start({ ...HARNESS, ...KEEPALIVE, clock: new FakeClock(Date.now()) });
    const h = harness;
    const log = new VerificationLog(h);
    const dirA = tempDir();
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name: 'frozen', joinTtlMs: 0 });
    const hostA = enrolled.hostId;
    const frozen = await spawnHost(h, hostA, dirA, enrolled.joinToken);
    const agentIds = ['caller-1', 'caller-2'];
    for (const agentId of agentIds) await ensure(h, agentId, processSpec('--call-loop'));
    const onA = (agentId: string): string => join(dirA, 'agents', agentId);
    for (const agentId of agentIds) {
      await waitUntil(() => runningOn(h, agentId, hostA), `${agentId} running on the host process`);
      await waitUntil(() => callsOf(onA(agentId)).ok > 0, `${agentId}'s calls accepted`);
    }
    const pids = agentIds.map((agentId) => readyPid(onA(agentId)) ?? 0);
    const oldIncarnations = new Map<string, number>();
    for (const agentId of agentIds) oldIncarnations.set(agentId, (await agentInfo(h, agentId)).incarnation);
    const dirB = tempDir();
    const { hostId: hostB } = await h.startHost('spare', { allowedCommands: [NODE], agentsDir: join(dirB, 'agents'), stopGraceMs: 0, isSelfFenceEnabled: true, ...KEEPALIVE });

    // Frozen: the host process stops; its children do not, and go on calling with their token files.
    const gone = nextEvent<{ hostId: string }>(h.cp.events, 'host-disconnected', (e) => e.hostId === hostA);
    frozen.child.kill('SIGSTOP');
    await gone;
    await advanceUntil(h.clock, 1_000, async () => {
      for (const agentId of agentIds) if (!(await runningOn(h, agentId, hostB))) return false;
      return true;
    }, 'both agents running on the spare host');
    for (const agentId of agentIds) {
      expect((await agentInfo(h, agentId)).incarnation).toBeGreaterThan(oldIncarnations.get(agentId) ?? Infinity);
      await waitUntil(() => callsOf(join(dirB, 'agents', agentId)).ok > 0, `${agentId}'s new copy's calls accepted`);
    }
    // The old copies still run and call (their token files are still there: their host is frozen), refused.
    expect(pids.every((pid) => !isGone(pid))).toBe(true);
    for (const agentId of agentIds) {
      expect(existsSync(join(onA(agentId), 'token'))).toBe(true);
      const refused = callsOf(onA(agentId)).refused;
      await waitUntil(() => callsOf(onA(agentId)).refused > refused + 5, `${agentId}'s old copy to be refused`);
    }

    // It resumes: told that its agents live elsewhere, it stops them and deletes their token files.
    const back = nextEvent<{ hostId: string }>(h.cp.events, 'host-connected', (e) => e.hostId === hostA);
    frozen.child.kill('SIGCONT');
    await back;
    await waitUntil(() => pids.every(isGone), 'the old copies to be stopped');
    for (const agentId of agentIds) {
      await waitUntil(() => !existsSync(join(onA(agentId), 'token')), `${agentId}'s old token file to be deleted`);
      expect(await runningOn(h, agentId, hostB)).toBe(true);
      expect(log.verified(agentId, oldIncarnations.get(agentId)).length).toBeGreaterThan(0);
      expect(log.overlaps(agentId)).toEqual([]);
    }
    expect(await hostLoad(h, hostA)).toBe(0);
    // Stopped because the control plane said so (the host's log is written asynchronously).
    await waitUntil(() => /agent lives elsewhere now/.test(frozen.output.join('')), "the host's log to say why it stopped them");
  });
});
