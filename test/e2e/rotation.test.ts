/**
 * The original bug: a token minted once, at dispatch, gives 401s once it
 * expires. Control plane and one host share a fake clock; time moves in TTL/20
 * steps through five token lifetimes, and after every step the test waits for
 * each agent's heartbeat, for the control plane to settle, and for every
 * agent's holder to carry the generation the control plane issued last.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import type { AgentHost } from '../../agent-host/agent-host.js';
import { type TetherError, UnauthenticatedError } from '../../common/errors.js';
import { call, Harness } from '../support/harness.js';
import { waitUntil } from '../support/wait.js';

const TTL_MS = 60_000;
const STEP_MS = TTL_MS / 20;
const LIFETIMES = 5;
const STEPS = (LIFETIMES * TTL_MS) / STEP_MS;
const AGENT_IDS = ['rot-a', 'rot-b', 'rot-c'] as const;

/** One heartbeat as the host saw it finish. */
interface Beat {
  step: number;
  atMs: number;
  isOk: boolean;
  generation: number;
  error: Error | undefined;
}

/** What a run through the lifetimes observed, per agent. */
interface Run {
  beats: Map<string, Beat[]>;
  /** Generations applied to the host's holders, in order. */
  applied: Map<string, number[]>;
  /** Every credential the control plane issued to an agent, in order. */
  issued: Map<string, { generation: number; issuedAtMs: number; expiresAtMs: number }[]>;
}

/** Lists of `agentIds`, each empty. */
function perAgent<T>(agentIds: readonly string[]): Map<string, T[]> {
  return new Map(agentIds.map((id) => [id, [] as T[]]));
}

/** The list of `agentId` in `map` (every agent of the run has one). */
function of<T>(map: Map<string, T[]>, agentId: string): T[] {
  const list = map.get(agentId);
  if (list === undefined) throw new Error(`no record for agent ${agentId}`);
  return list;
}

/**
 * On `harness`'s control plane, starts one host running {@link AGENT_IDS},
 * then walks the clock through {@link STEPS} steps. After each step it waits until
 * (1) every agent's heartbeat of that step has finished on the host, (2) the
 * control plane is settled (no rotation due or running), and only then (3)
 * every holder's generation equals the last one the control plane issued.
 * Comparing before (2) could pass while a signing is still in flight.
 */
async function runLifetimes(harness: Harness): Promise<{ run: Run; host: AgentHost; startedAtMs: number }> {
  const run: Run = { beats: perAgent(AGENT_IDS), applied: perAgent(AGENT_IDS), issued: perAgent(AGENT_IDS) };
  let step = 0;
  const onIssued = (e: { agentId: string; generation: number; expiresAtMs: number }): void => {
    if (e.agentId !== '') run.issued.get(e.agentId)?.push({ generation: e.generation, issuedAtMs: harness.clock.now(), expiresAtMs: e.expiresAtMs });
  };
  harness.cp.events.on('credential-issued', onIssued);
  onTestFinished(() => void harness.cp.events.off('credential-issued', onIssued));

  const { host, hostId } = await harness.startHost('rotation-host');
  const onBeat = (e: { agentId: string; isOk: boolean; generation: number; error?: Error }): void => {
    run.beats.get(e.agentId)?.push({ step, atMs: harness.clock.now(), isOk: e.isOk, generation: e.generation, error: e.error });
  };
  const onApplied = (e: { agentId: string; generation: number }): void => void run.applied.get(e.agentId)?.push(e.generation);
  host.events.on('heartbeat', onBeat);
  host.events.on('rotation-applied', onApplied);
  onTestFinished(() => {
    host.events.off('heartbeat', onBeat);
    host.events.off('rotation-applied', onApplied);
  });

  for (const agentId of AGENT_IDS) await harness.dispatch(host, hostId, agentId);
  const startedAtMs = harness.clock.now();

  const lastIssued = (agentId: string): number | undefined => of(run.issued, agentId).at(-1)?.generation;
  for (step = 1; step <= STEPS; step++) {
    harness.clock.advance(STEP_MS);
    await waitUntil(
      () =>
        AGENT_IDS.every((id) => of(run.beats, id).length >= step) &&
        harness.cp.isSettled() &&
        AGENT_IDS.every((id) => host.agentCredential(id)?.generation === lastIssued(id)),
      `step ${step}: heartbeats, a settled control plane and holders at the issued generation`,
    );
    // Exactly one beat per agent per step: none missed, none doubled.
    for (const agentId of AGENT_IDS) expect(of(run.beats, agentId), `${agentId} beats after step ${step}`).toHaveLength(step);
  }
  return { run, host, startedAtMs };
}

describe('agent credentials over many lifetimes (the original bug)', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('keeps every heartbeat authenticated through five token lifetimes by rotating each agent', async () => {
    harness = await Harness.start({ agentTokenTtlMs: TTL_MS, clockToleranceMs: 0, heartbeatIntervalMs: STEP_MS });
    const { run, host, startedAtMs } = await runLifetimes(harness);

    expect(harness.clock.now() - startedAtMs).toBe(LIFETIMES * TTL_MS);
    for (const agentId of AGENT_IDS) {
      const beats = of(run.beats, agentId);
      const failed = beats.filter((b) => !b.isOk).map((b) => ({ step: b.step, error: b.error?.message }));
      expect(failed, `${agentId}: failed heartbeats`).toEqual([]);
      expect(beats).toHaveLength(STEPS);

      const applied = of(run.applied, agentId);
      expect(applied.length, `${agentId}: rotations applied`).toBeGreaterThanOrEqual(4);
      // Every credential issued after the first reached this agent's holder, in order, none skipped.
      const issued = of(run.issued, agentId).map((c) => c.generation);
      expect(issued[0]).toBe(1);
      expect(applied).toEqual(issued.slice(1));
      // Each token was replaced with at least 40 % of its life left (the margin the design's promise stands on).
      const credentials = of(run.issued, agentId);
      for (let i = 1; i < credentials.length; i++) {
        const [previous, next] = [credentials[i - 1], credentials[i]];
        expect((previous?.expiresAtMs ?? 0) - (next?.issuedAtMs ?? 0), `${agentId}: life left at generation ${i + 1}`).toBeGreaterThanOrEqual(0.4 * TTL_MS);
      }

      // The control plane's record agrees with what the host holds.
      const info = await call(harness.admin.getAgent.bind(harness.admin), { agentId });
      expect(info.agent?.generation).toBe(issued.at(-1));
      expect(host.agentCredential(agentId)?.generation).toBe(issued.at(-1));
      expect(host.agentCredential(agentId)?.expiresAtMs).toBeGreaterThan(harness.clock.now());
    }
  });

  it('without rotation, heartbeats fail UNAUTHENTICATED once the first token expires (the test can fail)', async () => {
    harness = await Harness.start({
      agentTokenTtlMs: TTL_MS,
      clockToleranceMs: 0,
      heartbeatIntervalMs: STEP_MS,
      isRotationEnabled: false,
    });
    const { run, host } = await runLifetimes(harness);

    for (const agentId of AGENT_IDS) {
      const issued = of(run.issued, agentId);
      expect(issued.map((c) => c.generation)).toEqual([1]);
      expect(of(run.applied, agentId)).toEqual([]);
      expect(host.agentCredential(agentId)?.generation).toBe(1);
      const expiresAtMs = issued[0]?.expiresAtMs ?? 0;

      const beats = of(run.beats, agentId);
      expect(beats).toHaveLength(STEPS);
      const beforeExpiry = beats.filter((b) => b.atMs < expiresAtMs);
      const afterExpiry = beats.filter((b) => b.atMs >= expiresAtMs);
      // Both halves are non-empty: the run crosses the expiry with beats on either side.
      expect(beforeExpiry.length).toBeGreaterThan(0);
      expect(afterExpiry.length).toBeGreaterThan(0);
      expect(beforeExpiry.every((b) => b.isOk), `${agentId}: beats before expiry succeed`).toBe(true);
      for (const beat of afterExpiry) {
        expect(beat.isOk, `${agentId}: beat at step ${beat.step} fails`).toBe(false);
        // The client wrapper turned the status into a typed error once.
        expect(beat.error).toBeInstanceOf(UnauthenticatedError);
        expect((beat.error as TetherError).code).toBe('unauthenticated');
        expect(((beat.error as TetherError).cause as grpc.ServiceError).code).toBe(grpc.status.UNAUTHENTICATED);
      }
    }
  });
});
