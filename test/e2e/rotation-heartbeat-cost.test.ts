/**
 * What the hot paths cost the store, counted through a Store of our own
 * around the real one. A rotation (and the host's Ack of it) reads only the
 * columns a rotation decides on and writes without reading the agent back: no
 * full agent read (`getAgent`: every column, two JSON documents parsed) and no
 * `updateAgent` (which reads the row twice). A Heartbeat answers the agent's
 * state from memory once known: no store call at all. Revocation stays whole:
 * a stopped agent's token is refused at once, and a restarted agent's state is
 * not the stale one.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { countingStore, StoreCalls } from '../support/counting-store.js';
import { bearer, call, Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const AGENT_ID = 'cost-1';

describe('rotation and heartbeat store cost', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  async function start(): Promise<{ h: Harness; calls: StoreCalls; credentials: ReadOnlyCredentials; hostId: string }> {
    const calls = new StoreCalls();
    const h = await Harness.start({ wrapStore: (store) => countingStore(store, calls), heartbeatIntervalMs: 3_600_000, isRotationEnabled: false });
    harness = h;
    const { host, hostId } = await h.startHost('cost-host');
    const started = nextEvent<{ agentId: string; credentials: ReadOnlyCredentials }>(host.events, 'agent-started', (e) => e.agentId === AGENT_ID);
    await h.dispatch(host, hostId, AGENT_ID);
    const { credentials } = await started;
    await waitUntil(async () => (await h.store.getAgent(AGENT_ID))?.state === 'running', 'the agent running');
    return { h, calls, credentials, hostId };
  }

  it('rotates, and records the Ack, reading only what a rotation needs', async () => {
    const { h, calls } = await start();
    // The start's own events written first: what follows is the rotation's alone.
    await h.cp.eventLog.flush();
    calls.reset();
    const acked = waitUntil(async () => (await h.store.getAgent(AGENT_ID))?.ackedGeneration === 2, 'the rotation acknowledged');
    const rotated = await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: AGENT_ID });
    expect(rotated.generation).toBe(2);
    await acked;
    const stored = await h.store.getAgent(AGENT_ID);
    expect(stored).toMatchObject({ generation: 2, ackedGeneration: 2, expiresAtMs: rotated.expiresAtMs });
    expect(stored?.ackedExpiresAtMs).toBe(rotated.expiresAtMs);
    await h.cp.eventLog.flush();
    const { appendEvents, ...rotation } = calls.snapshot();
    expect(rotation).toEqual({ getAgentCredentialState: 2, patchAgent: 2 });
    // Its lifecycle event (credential.rotated) is one write, no read, and shared by every event of its turn (a storm's too).
    expect(appendEvents).toBe(1);
  });

  it('answers a Heartbeat without a store call once the state is known, and still refuses a stopped agent', async () => {
    const { h, calls, credentials } = await start();
    const client = h.agentClient();
    const beat = async (token: string): Promise<{ state: AgentState } | grpc.status> => {
      try {
        return await call(client.heartbeat.bind(client), { agentId: AGENT_ID }, bearer(token));
      } catch (err) {
        return (err as grpc.ServiceError).code;
      }
    };
    const token = credentials.get();
    expect(await beat(token)).toMatchObject({ state: AgentState.AGENT_STATE_RUNNING });
    // The start's lifecycle events written first (a heartbeat makes none).
    await h.cp.eventLog.flush();
    calls.reset();
    for (let i = 0; i < 5; i++) expect(await beat(token)).toMatchObject({ state: AgentState.AGENT_STATE_RUNNING });
    expect(calls.snapshot()).toEqual({});

    await call(h.admin.stopAgent.bind(h.admin), { agentId: AGENT_ID, reason: 'test' });
    expect(await beat(token)).toBe(grpc.status.UNAUTHENTICATED);
  });
});
