/**
 * One agent cannot hurt its neighbours (issue 13, Show 4): the host routes the
 * control plane's envelopes to a queue per agent, so an agent that will not
 * stop holds up only itself, and a stop has a deadline past which the agent is
 * abandoned (reported `stopped`/`abandoned`: holder revoked, token file
 * deleted, process group killed, a module fenced off). Real control plane,
 * real host, real child processes; time on the shared fake clock.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import type { AgentContext, AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { advanceUntil } from '../support/advance-until.js';
import { call, Harness } from '../support/harness.js';
import { ScriptedModule } from '../support/scripted-module.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const NODE = process.execPath;
const FIXTURE = fileURLToPath(new URL('../support/process-agent-fixture.mjs', import.meta.url));
const STOP_DEADLINE_MS = 5_000;
/** Longer than the deadline, so a process that ignores SIGTERM is still alive when the deadline falls. */
const STOP_GRACE_MS = 10_000;
const CLOCK_STEP_MS = 500;

type Stopped = { agentId: string; reason: string; outcome: 'stopped' | 'abandoned' };

/** `process.getActiveResourcesInfo()` counted by type. */
function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const type of process.getActiveResourcesInfo()) counts[type] = (counts[type] ?? 0) + 1;
  return counts;
}

/** Resource types of which `current` holds more than `baseline`. */
function surplusOver(baseline: Record<string, number>, current: Record<string, number>): [string, number][] {
  return Object.entries(current)
    .map(([type, count]): [string, number] => [type, count - (baseline[type] ?? 0)])
    .filter(([, extra]) => extra > 0);
}

const nextMacrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function forceGc(): void {
  const gc = globalThis.gc;
  if (gc === undefined) throw new Error('run with --expose-gc (vitest.config.ts execArgv)');
  gc();
}

/** Whether `pid` is no process at all (reaped): `kill(pid, 0)` fails with ESRCH. */
function isNoProcess(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** The `gen` and `jti` claims of a JWT (test-side decoding only). */
function claimsOf(token: string): { gen: number; jti: string } {
  const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { gen: number; jti: string };
  return { gen: payload.gen, jti: payload.jti };
}

async function send(harness: Harness, agentId: string, texts: string[]): Promise<void> {
  await call(harness.admin.sendMessages.bind(harness.admin), {
    agentId,
    messages: texts.map((text) => ({ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: '' })),
  });
}

async function dispatchProcess(harness: Harness, host: AgentHost, hostId: string, agentId: string, args: string[]): Promise<ReadOnlyCredentials> {
  const started = nextEvent<{ agentId: string; credentials: ReadOnlyCredentials }>(host.events, 'agent-started', (e) => e.agentId === agentId);
  await call(harness.admin.dispatchAgent.bind(harness.admin), {
    agentId,
    name: agentId,
    hostId,
    hostLabels: [],
    spec: { kind: 'process', module: '', command: NODE, args, config: '' },
  });
  return (await started).credentials;
}

describe('agent isolation on one host', () => {
  let harness: Harness | undefined;
  const dirs: string[] = [];
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('a stopped module agent that never lets go blocks no neighbour and is abandoned at the deadline', async () => {
    harness = await Harness.start();
    const h = harness;
    const scripted = new ScriptedModule();
    let hungContext: AgentContext | undefined;
    let hungRef: WeakRef<object> | undefined;
    let isHungHanded = false;
    // Never settles a message and never looks at its signal.
    const hung: AgentModule = (context) => {
      hungContext = context;
      hungRef = new WeakRef(context);
      return {
        onMessage: () => {
          isHungHanded = true;
          return new Promise<void>(() => undefined);
        },
      };
    };
    let agentsChannel: grpc.Channel | undefined;
    const { host, hostId } = await h.startHost('isolation', {
      modules: new Map([
        ['hung', hung],
        ['scripted', scripted.module],
      ]),
      stopDeadlineMs: STOP_DEADLINE_MS,
      channelFactory: (target, credentials, options, purpose) => {
        const channel = new grpc.Channel(target, credentials, options);
        if (purpose === 'agents') agentsChannel = channel;
        return channel;
      },
    });
    await waitUntil(() => agentsChannel?.getConnectivityState(true) === grpc.connectivityState.READY, "the agents' channel connected");
    await nextMacrotask();
    forceGc();
    const baseline = activeResources();

    const hungStarted = nextEvent<{ agentId: string; credentials: ReadOnlyCredentials }>(host.events, 'agent-started', (e) => e.agentId === 'hung');
    await h.dispatch(host, hostId, 'hung', 'hung');
    const hungCredentials = (await hungStarted).credentials;
    await h.dispatch(host, hostId, 'ok', 'scripted');
    await send(h, 'hung', ['hold forever']);
    await waitUntil(() => isHungHanded, 'the hung agent handed its message');

    const stopped: Stopped[] = [];
    const onStopped = (e: Stopped): void => void stopped.push(e);
    host.events.on('agent-stopped', onStopped);
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'hung', reason: 'operator stop' });
    await waitUntil(() => hungContext?.signal.aborted === true, "the host began stopping the hung agent (its signal aborted)");

    // Not one fake-clock step: the neighbour's forced rotation is applied and it takes a message meanwhile.
    const clockAtStopMs = h.clock.now();
    const applied = nextEvent<{ agentId: string; generation: number }>(host.events, 'rotation-applied', (e) => e.agentId === 'ok');
    const rotated = await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'ok' });
    expect((await applied).generation).toBe(rotated.generation);
    await send(h, 'ok', ['after the stop']);
    await waitUntil(() => scripted.taken('ok').includes('after the stop'), 'the neighbour took its message');
    expect(scripted.of('ok').find((r) => r.payload === 'after the stop')?.generation).toBe(rotated.generation);
    expect(h.clock.now()).toBe(clockAtStopMs);
    expect(stopped).toEqual([]);

    // Past the deadline the hung agent is abandoned: reported stopped/abandoned, its holder revoked.
    await advanceUntil(h.clock, CLOCK_STEP_MS, () => stopped.length > 0, 'the hung agent reported stopped');
    expect(stopped).toEqual([{ agentId: 'hung', reason: 'operator stop', outcome: 'abandoned' }]);
    expect(h.clock.now() - clockAtStopMs).toBeGreaterThanOrEqual(STOP_DEADLINE_MS);
    expect(() => hungCredentials.get()).toThrow(/revoked/);
    expect(host.agentIds()).toEqual(['ok']);
    expect(h.logs.records().some((r) => r.msg === 'agent abandoned at the stop deadline' && r.agentId === 'hung')).toBe(true);
    // The operator sees it too: the control plane records how the stop ended.
    await waitUntil(
      async () => (await call(h.admin.getAgent.bind(h.admin), { agentId: 'hung' })).agent?.detail.includes('abandoned') === true,
      'the control plane to record the abandoned stop',
    );
    expect((await call(h.admin.getAgent.bind(h.admin), { agentId: 'hung' })).agent).toMatchObject({
      state: AgentState.AGENT_STATE_STOPPED,
      detail: 'operator stop (abandoned by its host at the stop deadline)',
    });
    host.events.off('agent-stopped', onStopped);

    // Nothing of the hung agent stays reachable from the host, and no handle is left over.
    const okStopped = nextEvent<Stopped>(host.events, 'agent-stopped', (e) => e.agentId === 'ok');
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'ok', reason: 'done' });
    expect((await okStopped).outcome).toBe('stopped');
    hungContext = undefined;
    let surplus = surplusOver(baseline, activeResources());
    await waitUntil(async () => {
      await nextMacrotask();
      forceGc();
      surplus = surplusOver(baseline, activeResources());
      return surplus.length === 0 && hungRef?.deref() === undefined;
    }, 'active resources back to the baseline, the abandoned agent collected').catch(() => undefined);
    expect(surplus).toEqual([]);
    expect(hungRef?.deref(), 'the abandoned agent is still reachable').toBeUndefined();

    await host.close();
    expect(host.state).toBe('closed');
  });

  it('close() returns past the deadline with a hung module agent still running', async () => {
    harness = await Harness.start();
    const h = harness;
    let isHungHanded = false;
    const hung: AgentModule = () => ({
      onMessage: () => {
        isHungHanded = true;
        return new Promise<void>(() => undefined);
      },
    });
    const { host, hostId } = await h.startHost('closing', { modules: new Map([['hung', hung]]), stopDeadlineMs: STOP_DEADLINE_MS });
    await h.dispatch(host, hostId, 'hung', 'hung');
    await send(h, 'hung', ['hold forever']);
    await waitUntil(() => isHungHanded, 'the hung agent handed its message');
    const stopped = nextEvent<Stopped>(host.events, 'agent-stopped', (e) => e.agentId === 'hung');
    let isClosed = false;
    const closing = host.close().then(() => {
      isClosed = true;
    });
    await advanceUntil(h.clock, CLOCK_STEP_MS, () => isClosed, 'host.close() returned');
    await closing;
    expect((await stopped).outcome).toBe('abandoned');
  });

  it('a module agent that never finishes starting holds up neither its host nor close()', async () => {
    harness = await Harness.start();
    const h = harness;
    let isFactoryCalled = false;
    const neverStarts: AgentModule = () => {
      isFactoryCalled = true;
      return new Promise(() => undefined);
    };
    const scripted = new ScriptedModule();
    const { host, hostId } = await h.startHost('slow-start', {
      modules: new Map([
        ['never', neverStarts],
        ['scripted', scripted.module],
      ]),
      stopDeadlineMs: STOP_DEADLINE_MS,
    });
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'never',
      name: 'never',
      hostId,
      hostLabels: [],
      spec: { kind: 'module', module: 'never', command: '', args: [], config: '' },
    });
    await waitUntil(() => isFactoryCalled, 'the module factory called');
    // Its neighbour starts and takes a message meanwhile, in the same instant of fake time.
    const clockAtStartMs = h.clock.now();
    await h.dispatch(host, hostId, 'ok', 'scripted');
    await send(h, 'ok', ['hello']);
    await waitUntil(() => scripted.taken('ok').includes('hello'), 'the neighbour took its message');
    expect(h.clock.now()).toBe(clockAtStartMs);
    await advanceUntil(
      h.clock,
      CLOCK_STEP_MS,
      () => h.logs.records().some((r) => r.msg === 'agent failed to start' && r.agentId === 'never'),
      'the start given up at the deadline',
    );
    expect(host.agentIds()).toEqual(['ok']);
    await host.close();
    expect(host.state).toBe('closed');
  });

  it('a process agent that ignores SIGTERM delays no other rotation and is killed, group and token file, at the deadline', async () => {
    harness = await Harness.start();
    const h = harness;
    const agentsDir = mkdtempSync(join(tmpdir(), 'tether-iso-'));
    dirs.push(agentsDir);
    const { host, hostId } = await h.startHost('isolation-proc', {
      allowedCommands: [NODE],
      agentsDir,
      stopGraceMs: STOP_GRACE_MS,
      stopDeadlineMs: STOP_DEADLINE_MS,
    });
    await dispatchProcess(h, host, hostId, 'stubborn', [FIXTURE, '--ignore-sigterm']);
    await dispatchProcess(h, host, hostId, 'neighbour', [FIXTURE, '--report-each']);
    const stubbornDir = join(agentsDir, 'stubborn');
    await waitUntil(() => existsSync(join(stubbornDir, 'ready')), 'the stubborn agent ready');
    const pid = Number(readFileSync(join(stubbornDir, 'ready'), 'utf8'));
    expect(isNoProcess(pid)).toBe(false);
    expect(existsSync(join(stubbornDir, 'token'))).toBe(true);

    const stopped = nextEvent<Stopped>(host.events, 'agent-stopped', (e) => e.agentId === 'stubborn');
    await call(h.admin.stopAgent.bind(h.admin), { agentId: 'stubborn', reason: 'operator stop' });
    await waitUntil(() => existsSync(join(stubbornDir, 'sigterm')), 'the stubborn agent got (and ignored) SIGTERM');

    // Within the same instant of fake time, the neighbour's rotation lands in its holder and token file.
    const clockAtStopMs = h.clock.now();
    const applied = nextEvent<{ agentId: string; generation: number }>(host.events, 'rotation-applied', (e) => e.agentId === 'neighbour');
    const rotated = await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'neighbour' });
    expect((await applied).generation).toBe(rotated.generation);
    expect(claimsOf(readFileSync(join(agentsDir, 'neighbour', 'token'), 'utf8')).gen).toBe(rotated.generation);
    expect(h.clock.now()).toBe(clockAtStopMs);

    let isStopped = false;
    const outcome = stopped.then((e) => {
      isStopped = true;
      return e.outcome;
    });
    await advanceUntil(h.clock, CLOCK_STEP_MS, () => isStopped, 'the stubborn agent reported stopped');
    expect(await outcome).toBe('abandoned');
    expect(h.clock.now() - clockAtStopMs).toBeLessThan(STOP_GRACE_MS);
    await waitUntil(() => isNoProcess(pid), 'the stubborn process group gone (ESRCH)');
    expect(() => process.kill(-pid, 0)).toThrow(expect.objectContaining({ code: 'ESRCH' }) as Error);
    expect(existsSync(join(stubbornDir, 'token'))).toBe(false);
    expect(host.agentIds()).toEqual(['neighbour']);
  });

  it('a process agent sees every rotation in its token file before the next message it is given', async () => {
    harness = await Harness.start();
    const h = harness;
    const agentsDir = mkdtempSync(join(tmpdir(), 'tether-iso-'));
    dirs.push(agentsDir);
    const { host, hostId } = await h.startHost('rotation-order', { allowedCommands: [NODE], agentsDir, stopDeadlineMs: STOP_DEADLINE_MS });
    const credentials = await dispatchProcess(h, host, hostId, 'reader', [FIXTURE, '--report-each']);
    const seenPath = join(agentsDir, 'reader', 'seen.json');
    const seen = (): { seq: number; text: string; gen?: number; jti?: string; error?: string }[] =>
      existsSync(seenPath) ? (JSON.parse(readFileSync(seenPath, 'utf8')) as []) : [];
    const ROUNDS = 10;
    for (let round = 1; round <= ROUNDS; round++) {
      // The Deliver follows the TokenRotated on the stream at once: the test does not wait for the host to apply it.
      const rotated = await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'reader' });
      await send(h, 'reader', [`m${round}`]);
      await waitUntil(() => seen().some((s) => s.text === `m${round}`), `the agent handed m${round}`);
      const entry = seen().find((s) => s.text === `m${round}`);
      // Nothing rotated since, so the holder has the rotation the agent should have read.
      expect(entry).toEqual({ seq: round, text: `m${round}`, ...claimsOf(credentials.get()) });
      expect(entry?.gen).toBe(rotated.generation);
    }
    expect(seen()).toHaveLength(ROUNDS);
  });
});
