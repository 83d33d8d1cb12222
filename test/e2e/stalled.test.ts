/**
 * Stalled, told apart from dead, on a real control plane and host with real
 * child processes, time on the shared fake clock: a process agent that stops
 * answering its liveness probe (SIGSTOP: alive, not answering) becomes
 * `stalled` and `running` again when it answers (SIGCONT); a module agent
 * holding a message past its handler deadline is `stalled` until it lets go;
 * a dead process is `failed`, never `stalled`. Stalled is never a kill.
 */
import * as grpc from '@grpc/grpc-js';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentRecord } from '../../control-plane/store/store.js';
import { advanceUntil } from '../support/advance-until.js';
import { call, Harness, statusOf } from '../support/harness.js';
import { ScriptedModule } from '../support/scripted-module.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const NODE = process.execPath;
const FIXTURE = fileURLToPath(new URL('../support/process-agent-fixture.mjs', import.meta.url));
const STALL_AFTER_MS = 30_000;
const HANDLER_DEADLINE_MS = 60_000;

/** Liveness probes the host logged sending to `agentId`. */
function probesSent(h: Harness, agentId: string): number {
  return h.logs.records().filter((r) => r.msg === 'liveness probe sent' && r.agentId === agentId).length;
}

describe('stalled agents', () => {
  let harness: Harness | undefined;
  const cleanups: (() => void)[] = [];

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) cleanup();
    await harness?.close();
    harness = undefined;
  });

  async function agentOf(h: Harness, agentId: string): Promise<AgentRecord> {
    const agent = await h.store.getAgent(agentId);
    if (agent === undefined) throw new Error(`no agent ${agentId}`);
    return agent;
  }

  async function send(h: Harness, agentId: string, text: string): Promise<void> {
    await call(h.admin.sendMessages.bind(h.admin), { agentId, messages: [{ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: '' }] });
  }

  it('reports a process agent that stops answering its probe stalled, running again when it answers, and a dead one failed, never stalled', async () => {
    const h = await Harness.start();
    harness = h;
    const root = mkdtempSync(join(tmpdir(), 'tether-stalled-'));
    cleanups.push(() => rmSync(root, { recursive: true, force: true }));
    const agentsDir = join(root, 'agents');
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: 10_000, stallAfterMs: STALL_AFTER_MS });
    const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === 'sleepy');
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'sleepy',
      name: '',
      hostId,
      hostLabels: [],
      spec: { kind: 'process', module: '', command: NODE, args: [FIXTURE], config: '' },
    });
    await started;
    const ready = join(agentsDir, 'sleepy', 'ready');
    await waitUntil(() => existsSync(ready), 'sleepy ready');
    await waitUntil(async () => (await agentOf(h, 'sleepy')).state === 'running', 'sleepy running');
    const pid = Number(readFileSync(ready, 'utf8'));
    // Whatever happens below, a stopped child must not outlive the test.
    cleanups.push(() => {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // Gone already.
      }
    });

    // Alive, not answering: stalled, with a detail that says so; not killed.
    process.kill(pid, 'SIGSTOP');
    await advanceUntil(h.clock, 10_000, async () => (await agentOf(h, 'sleepy')).state === 'stalled', 'sleepy stalled');
    const stalled = await agentOf(h, 'sleepy');
    expect(stalled.detail).toMatch(/^its process is alive but has not answered its liveness probe for \d+ ms \(stall after 30000 ms\)$/);
    expect(host.agentIds()).toContain('sleepy');
    expect(() => process.kill(pid, 0)).not.toThrow();

    // Answering again (the probes waiting on its stdin are read at once): running, same incarnation.
    process.kill(pid, 'SIGCONT');
    await waitUntil(async () => (await agentOf(h, 'sleepy')).state === 'running', 'sleepy running again');
    expect(await agentOf(h, 'sleepy')).toMatchObject({ incarnation: stalled.incarnation, restarts: 0 });
    // Still takes its mail.
    const acked = nextEvent<{ agentId: string; seq: number }>(h.cp.events, 'message-acked', (e) => e.agentId === 'sleepy' && e.seq === 1);
    await send(h, 'sleepy', 'still here');
    await acked;

    // Dead: failed, with how it died; never stalled, however long the probes go unanswered.
    process.kill(pid, 'SIGKILL');
    await waitUntil(async () => (await agentOf(h, 'sleepy')).state === 'failed', 'sleepy failed');
    h.clock.advance(3 * STALL_AFTER_MS);
    await waitUntil(() => h.cp.isSettled(), 'the control plane settled');
    expect(await agentOf(h, 'sleepy')).toMatchObject({ state: 'failed', detail: 'killed by signal SIGKILL' });

    const transitions = (await h.store.listAgentTransitions('sleepy', 50)).map((t) => `${t.fromState ?? '-'}>${t.toState}`);
    expect(transitions).toEqual(['->pending', 'pending>starting', 'starting>running', 'running>stalled', 'stalled>running', 'running>failed']);
    const reasons = (await h.store.listAgentTransitions('sleepy', 50)).map((t) => t.reason);
    expect(reasons[3]).toMatch(/^its host reported it stalled: its process is alive but has not answered its liveness probe/);
    expect(reasons[4]).toBe('its host reported it answering again');
  });

  it('never reports a process that exited stalled, though its output stays open and no probe is answered', async () => {
    const h = await Harness.start();
    harness = h;
    const root = mkdtempSync(join(tmpdir(), 'tether-stalled-'));
    cleanups.push(() => rmSync(root, { recursive: true, force: true }));
    const agentsDir = join(root, 'agents');
    // A long grace: the host waits that long (on the fake clock) for the output of a process that exited.
    const graceMs = 10 * STALL_AFTER_MS;
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: graceMs, stallAfterMs: STALL_AFTER_MS });
    const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === 'gone');
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: 'gone',
      name: '',
      hostId,
      hostLabels: [],
      spec: { kind: 'process', module: '', command: NODE, args: [FIXTURE, '--orphan-holds-output'], config: '' },
    });
    await started;
    const orphanFile = join(agentsDir, 'gone', 'orphan');
    await waitUntil(() => existsSync(join(agentsDir, 'gone', 'ready')) && existsSync(orphanFile), 'gone ready');
    const orphan = Number(readFileSync(orphanFile, 'utf8'));
    cleanups.push(() => {
      try {
        process.kill(orphan, 'SIGKILL');
      } catch {
        // Gone already.
      }
    });
    const pid = Number(readFileSync(join(agentsDir, 'gone', 'ready'), 'utf8'));
    await waitUntil(async () => (await agentOf(h, 'gone')).state === 'running', 'gone running');

    // Killed with a probe outstanding: stopped first, so the probe sent next goes unanswered.
    process.kill(pid, 'SIGSTOP');
    const probesBefore = probesSent(h, 'gone');
    h.clock.advance(STALL_AFTER_MS / 3);
    await waitUntil(() => probesSent(h, 'gone') > probesBefore, 'a probe sent to the stopped process');
    process.kill(pid, 'SIGKILL');
    await waitUntil(() => h.logs.records().some((r) => r.msg === 'agent process exited' && r.pid === pid), 'the host to see the exit');
    // Its end waits for output that does not end; meanwhile, no probe is answered.
    const liveness: boolean[] = [];
    host.events.on('agent-liveness', (e) => liveness.push(e.isStalled));
    for (let i = 0; i < 9; i++) h.clock.advance(STALL_AFTER_MS / 3);
    await waitUntil(() => h.cp.isSettled(), 'the control plane settled');
    expect(host.agentIds()).toContain('gone');
    // Then the grace ends, and with it the wait: failed, with how it died.
    await advanceUntil(h.clock, STALL_AFTER_MS, async () => (await agentOf(h, 'gone')).state === 'failed', 'gone failed');
    expect(liveness).toEqual([]);
    expect(await agentOf(h, 'gone')).toMatchObject({ state: 'failed', detail: 'killed by signal SIGKILL' });
    const transitions = (await h.store.listAgentTransitions('gone', 50)).map((t) => `${t.fromState ?? '-'}>${t.toState}`);
    expect(transitions).toEqual(['->pending', 'pending>starting', 'starting>running', 'running>failed']);
  });

  it('reports a module agent that holds a message past its handler deadline stalled, and running once it lets go', async () => {
    const h = await Harness.start();
    harness = h;
    const scripted = new ScriptedModule();
    cleanups.push(() => scripted.openAll());
    const { host, hostId } = await h.startHost('h', { modules: new Map([['scripted', scripted.module]]), handlerDeadlineMs: HANDLER_DEADLINE_MS });
    await h.dispatch(host, hostId, 'slow', 'scripted');
    await waitUntil(async () => (await agentOf(h, 'slow')).state === 'running', 'slow running');
    const gate = scripted.hold('slow', 'long job');
    await send(h, 'slow', 'long job');
    await waitUntil(() => scripted.of('slow').length === 1, 'the handler holding the message');

    const liveness = nextEvent<{ agentId: string; isStalled: boolean }>(host.events, 'agent-liveness', (e) => e.agentId === 'slow');
    h.clock.advance(HANDLER_DEADLINE_MS);
    expect(await liveness).toMatchObject({ isStalled: true });
    await waitUntil(async () => (await agentOf(h, 'slow')).state === 'stalled', 'slow stalled');
    expect((await agentOf(h, 'slow')).detail).toBe('it has held message 1 for 60000 ms, past its handler deadline of 60000 ms');
    expect(host.agentIds()).toContain('slow');

    const taken = nextEvent<{ agentId: string; seq: number }>(host.events, 'message-taken', (e) => e.agentId === 'slow' && e.seq === 1);
    gate.open();
    await taken;
    await waitUntil(async () => (await agentOf(h, 'slow')).state === 'running', 'slow running again');
    expect(scripted.taken('slow')).toEqual(['long job']);
  });

  it("an agent's own handler deadline overrides its host's: a shorter one stalls sooner, 0 never", async () => {
    const h = await Harness.start();
    harness = h;
    const scripted = new ScriptedModule();
    cleanups.push(() => scripted.openAll());
    const { host, hostId } = await h.startHost('h', { modules: new Map([['scripted', scripted.module]]), handlerDeadlineMs: HANDLER_DEADLINE_MS });
    const OWN_DEADLINE_MS = 10_000;
    for (const [agentId, handlerDeadlineMs] of [['brisk', OWN_DEADLINE_MS], ['patient', 0], ['usual', undefined]] as const) {
      const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === agentId);
      await call(h.admin.dispatchAgent.bind(h.admin), {
        agentId,
        name: agentId,
        hostId,
        hostLabels: [],
        spec: { kind: 'module', module: 'scripted', command: '', args: [], config: '', ...(handlerDeadlineMs === undefined ? {} : { handlerDeadlineMs }) },
      });
      await started;
      scripted.hold(agentId, 'long job');
      await send(h, agentId, 'long job');
      await waitUntil(() => scripted.of(agentId).length === 1, `${agentId} holding its message`);
    }
    const stateOf = async (agentId: string): Promise<string> => (await agentOf(h, agentId)).state;

    // Past its own deadline, well short of the host's: only brisk is stalled.
    const brisk = nextEvent<{ agentId: string; isStalled: boolean }>(host.events, 'agent-liveness', (e) => e.agentId === 'brisk');
    h.clock.advance(OWN_DEADLINE_MS);
    expect(await brisk).toMatchObject({ isStalled: true });
    await waitUntil(async () => (await stateOf('brisk')) === 'stalled', 'brisk stalled');
    expect((await agentOf(h, 'brisk')).detail).toBe(`it has held message 1 for ${OWN_DEADLINE_MS} ms, past its handler deadline of ${OWN_DEADLINE_MS} ms`);
    expect(await stateOf('usual')).toBe('running');

    // Past the host's: usual too; patient (0: no deadline) never, however long it holds its message.
    const usual = nextEvent<{ agentId: string; isStalled: boolean }>(host.events, 'agent-liveness', (e) => e.agentId === 'usual');
    h.clock.advance(HANDLER_DEADLINE_MS - OWN_DEADLINE_MS);
    expect(await usual).toMatchObject({ isStalled: true });
    await waitUntil(async () => (await stateOf('usual')) === 'stalled', 'usual stalled');
    h.clock.advance(10 * HANDLER_DEADLINE_MS);
    await waitUntil(() => h.cp.isSettled(), 'the control plane settled');
    expect(await stateOf('patient')).toBe('running');
    expect(h.logs.records().filter((r) => r.agentId === 'patient' && /stalled/.test(String(r.msg)))).toEqual([]);

    // The override is part of the spec: ensure with another one is a difference.
    const refused = await statusOf(
      call(h.admin.ensureAgent.bind(h.admin), {
        agentId: 'brisk',
        name: '',
        hostId,
        hostLabels: [],
        spec: { kind: 'module', module: 'scripted', command: '', args: [], config: '', handlerDeadlineMs: 20_000 },
        update: false,
      }),
    );
    expect(refused).toBe(grpc.status.FAILED_PRECONDITION);
    // And out of range is refused at dispatch.
    const tooLong = await statusOf(
      call(h.admin.dispatchAgent.bind(h.admin), {
        agentId: 'forever',
        name: 'forever',
        hostId,
        hostLabels: [],
        spec: { kind: 'module', module: 'scripted', command: '', args: [], config: '', handlerDeadlineMs: 8 * 24 * 3_600_000 },
      }),
    );
    expect(tooLong).toBe(grpc.status.INVALID_ARGUMENT);
  });
});
