/**
 * The control plane's heartbeat ledger (the last heartbeat of each agent, shown
 * by the admin API) forgets an agent on every end and every move, not only on an
 * admin stop: an agent that was stopped, completed, exited, failed or moved to
 * another host must leave nothing behind, or a control plane running for months
 * keeps one entry per agent it ever ran.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import type { AgentContext, AgentModule } from '../../agent-host/tools/agent-module.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { call, Harness, idleModule } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const NODE = process.execPath;
const FIXTURE = fileURLToPath(new URL('../support/process-agent-fixture.mjs', import.meta.url));
/** The harness's heartbeat interval. */
const BEAT_MS = 3_000;

describe('heartbeat ledger', () => {
  let harness: Harness | undefined;
  const dirs: string[] = [];

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('forgets an agent that is stopped, completes, exits, fails or moves to another host', async () => {
    harness = await Harness.start();
    const h = harness;
    const agentsDir = join(mkdtempSync(join(tmpdir(), 'tether-ledger-')), 'agents');
    dirs.push(join(agentsDir, '..'));
    const contexts = new Map<string, AgentContext>();
    const keep: AgentModule = (context) => {
      contexts.set(context.agentId, context);
      return {};
    };
    const { host: main, hostId: mainId } = await h.startHost('main', {
      modules: new Map([
        ['idle', idleModule],
        ['keep', keep],
      ]),
      allowedCommands: [NODE],
      agentsDir,
    });
    // Only hosts with the `roamer` module can run `moves`: once its host is revoked it waits, pending.
    const { host: doomed, hostId: doomedId } = await h.startHost('doomed', { modules: new Map([['roamer', idleModule]]) });

    await h.dispatch(main, mainId, 'stops', 'idle');
    await h.dispatch(main, mainId, 'completes', 'keep');
    await dispatchProcess(h, main, mainId, 'exits');
    await dispatchProcess(h, main, mainId, 'fails');
    await h.dispatch(doomed, doomedId, 'moves', 'roamer');
    for (const agentId of ['exits', 'fails']) await waitUntil(() => existsSync(join(agentsDir, agentId, 'ready')), `${agentId} to be ready`);
    const agentIds = ['stops', 'completes', 'exits', 'fails', 'moves'];

    // Every agent beats once: each is in the ledger, and the admin API shows its last heartbeat.
    const beaten = new Set<string>();
    const onBeat = (e: { agentId: string }): void => void beaten.add(e.agentId);
    h.cp.events.on('heartbeat', onBeat);
    try {
      h.clock.advance(BEAT_MS);
      await waitUntil(() => agentIds.every((agentId) => beaten.has(agentId)), 'a heartbeat of every agent');
    } finally {
      h.cp.events.off('heartbeat', onBeat);
    }
    expect(h.cp.heartbeatLedgerEntries).toBe(agentIds.length);
    for (const agentId of agentIds) expect(await lastHeartbeatMs(h, agentId), agentId).toBe(h.clock.now());

    const ends: { agentId: string; state: AgentState; end: () => Promise<unknown> }[] = [
      { agentId: 'stops', state: AgentState.AGENT_STATE_STOPPED, end: () => call(h.admin.stopAgent.bind(h.admin), { agentId: 'stops', reason: 'test' }) },
      { agentId: 'completes', state: AgentState.AGENT_STATE_EXITED, end: () => (contexts.get('completes') as AgentContext).agent.complete('completes', 'done') },
      { agentId: 'exits', state: AgentState.AGENT_STATE_EXITED, end: () => send(h, 'exits', 'exit 0') },
      { agentId: 'fails', state: AgentState.AGENT_STATE_FAILED, end: () => send(h, 'fails', 'exit 3') },
    ];
    let remaining = agentIds.length;
    for (const { agentId, state, end } of ends) {
      await end();
      await waitUntil(async () => (await agentState(h, agentId)) === state, `${agentId} to end as ${AgentState[state]}`);
      remaining--;
      expect(h.cp.heartbeatLedgerEntries, `the ledger after ${agentId} ended`).toBe(remaining);
      expect(await lastHeartbeatMs(h, agentId)).toBe(0);
    }

    // Its host revoked, `moves` goes back to pending under a new incarnation (no other host can run it yet).
    const revoked = await call(h.admin.revokeHost.bind(h.admin), { hostId: doomedId });
    expect(revoked.agentsMoved).toBe(1);
    expect(await agentState(h, 'moves')).toBe(AgentState.AGENT_STATE_PENDING);
    expect(h.cp.heartbeatLedgerEntries).toBe(0);
    expect(await lastHeartbeatMs(h, 'moves')).toBe(0);

    // Placed on a new host, it has no heartbeat until its new incarnation beats (the host's heartbeat
    // loop waits an interval first, and the clock has not moved).
    const { host: rescue } = await h.startHost('rescue', { modules: new Map([['roamer', idleModule]]) });
    await waitUntil(() => rescue.agentIds().includes('moves'), 'moves to start on the rescue host');
    expect(h.cp.heartbeatLedgerEntries).toBe(0);
    expect(await lastHeartbeatMs(h, 'moves')).toBe(0);

    h.clock.advance(BEAT_MS);
    await waitUntil(async () => (await lastHeartbeatMs(h, 'moves')) === h.clock.now(), 'the moved agent to beat again');
    expect(h.cp.heartbeatLedgerEntries).toBe(1);
  });
});

/** Dispatches the process fixture as `agentId` onto `hostId`; resolves once its host started it. */
async function dispatchProcess(harness: Harness, host: AgentHost, hostId: string, agentId: string): Promise<void> {
  const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === agentId);
  await call(harness.admin.dispatchAgent.bind(harness.admin), {
    agentId,
    name: agentId,
    hostId,
    hostLabels: [],
    spec: { kind: 'process', module: '', command: NODE, args: [FIXTURE], config: '' },
  });
  await started;
}

/** Sends one text message to `agentId` as the operator (the fixture exits with N on "exit N"). */
async function send(harness: Harness, agentId: string, text: string): Promise<void> {
  await call(harness.admin.sendMessages.bind(harness.admin), {
    agentId,
    messages: [{ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: '' }],
  });
}

async function agentState(harness: Harness, agentId: string): Promise<AgentState | undefined> {
  return (await call(harness.admin.getAgent.bind(harness.admin), { agentId })).agent?.state;
}

async function lastHeartbeatMs(harness: Harness, agentId: string): Promise<number | undefined> {
  return (await call(harness.admin.getAgent.bind(harness.admin), { agentId })).agent?.lastHeartbeatMs;
}
