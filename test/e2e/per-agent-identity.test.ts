/**
 * The first defect of the original fix: one heartbeat token shared by every
 * agent, so refreshing agent A's token made agent B's heartbeats go out as A.
 * Here A is force-rotated between B's heartbeats, and the control plane's record
 * of every heartbeat (the verified token's subject and generation) must show
 * each agent calling as itself, with only A's generation moving.
 */
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { call, Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const TTL_MS = 60_000;
const HEARTBEAT_INTERVAL_MS = 3_000;
/** Forced rotations of A; with one beat before the first, the run spans 12 s, well short of any scheduled rotation (30 s). */
const ROTATIONS_OF_A = 3;

/** A heartbeat as the control plane accepted it. */
interface ServerBeat {
  agentId: string;
  subject: string;
  generation: number;
  tokenId: string;
}

describe('per-agent identity', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it("rotating agent A never changes the identity or the token of agent B's heartbeats", async () => {
    harness = await Harness.start({ agentTokenTtlMs: TTL_MS, clockToleranceMs: 0, heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS });
    const h = harness;
    const serverBeats: ServerBeat[] = [];
    const onServerBeat = (e: ServerBeat): void => void serverBeats.push({ ...e });
    h.cp.events.on('heartbeat', onServerBeat);
    onTestFinished(() => void h.cp.events.off('heartbeat', onServerBeat));
    // The verification log: every accepted agent token, with the incarnation it belongs to.
    const verified: { agentId: string; incarnation: number; tokenId: string }[] = [];
    const onVerified = (e: { agentId: string; incarnation: number; tokenId: string }): void => void verified.push({ agentId: e.agentId, incarnation: e.incarnation, tokenId: e.tokenId });
    h.cp.events.on('agent-verified', onVerified);
    onTestFinished(() => void h.cp.events.off('agent-verified', onVerified));

    const { host, hostId } = await h.startHost('identity-host');
    // Every heartbeat the host finished, failed ones included (a refused beat never reaches serverBeats).
    const hostBeats: { agentId: string; isOk: boolean; error?: Error }[] = [];
    const onHostBeat = (e: { agentId: string; isOk: boolean; error?: Error }): void => void hostBeats.push(e);
    let appliedToB = 0;
    const onApplied = (e: { agentId: string }): void => {
      if (e.agentId === 'B') appliedToB++;
    };
    host.events.on('heartbeat', onHostBeat);
    host.events.on('rotation-applied', onApplied);
    onTestFinished(() => {
      host.events.off('heartbeat', onHostBeat);
      host.events.off('rotation-applied', onApplied);
    });

    await h.dispatch(host, hostId, 'A');
    await h.dispatch(host, hostId, 'B');
    const beatsOf = (agentId: string): number => hostBeats.filter((b) => b.agentId === agentId).length;

    /** Advances one heartbeat interval and waits for both agents' beats of that step and a settled control plane. */
    let step = 0;
    const beat = async (): Promise<void> => {
      step++;
      h.clock.advance(HEARTBEAT_INTERVAL_MS);
      await waitUntil(() => beatsOf('A') >= step && beatsOf('B') >= step && h.cp.isSettled(), `step ${step}: heartbeats of A and B`);
    };

    await beat();
    for (let round = 1; round <= ROTATIONS_OF_A; round++) {
      // Between two of B's beats: rotate A and wait until A's holder has the new credential.
      const applied = nextEvent<{ agentId: string; generation: number }>(host.events, 'rotation-applied', (e) => e.agentId === 'A');
      const rotated = await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'A' });
      expect(rotated.generation).toBe(1 + round);
      expect((await applied).generation).toBe(rotated.generation);
      expect(host.agentCredential('A')?.generation).toBe(rotated.generation);
      await beat();
    }

    const steps = ROTATIONS_OF_A + 1;
    expect(hostBeats.filter((b) => !b.isOk).map((b) => `${b.agentId}: ${b.error?.message ?? ''}`)).toEqual([]);
    expect(beatsOf('A')).toBe(steps);
    expect(beatsOf('B')).toBe(steps);

    // The server's view: each beat carried its own agent's token.
    const ofA = serverBeats.filter((b) => b.agentId === 'A');
    const ofB = serverBeats.filter((b) => b.agentId === 'B');
    expect(serverBeats).toHaveLength(2 * steps);
    expect(ofB.map((b) => b.subject)).toEqual(Array<string>(steps).fill('B'));
    expect(ofA.map((b) => b.subject)).toEqual(Array<string>(steps).fill('A'));
    // A moved one generation per rotation, each beat with a fresh token; B kept its first token throughout.
    expect(ofA.map((b) => b.generation)).toEqual(Array.from({ length: steps }, (_, i) => i + 1));
    expect(new Set(ofA.map((b) => b.tokenId)).size).toBe(steps);
    expect(ofB.map((b) => b.generation)).toEqual(Array<number>(steps).fill(1));
    expect(new Set(ofB.map((b) => b.tokenId)).size).toBe(1);
    expect(appliedToB).toBe(0);
    // Each accepted beat is in the verification log under its own agent, in its first incarnation.
    expect(verified.map((v) => `${v.agentId}:${v.tokenId}`)).toEqual(serverBeats.map((b) => `${b.agentId}:${b.tokenId}`));
    expect(new Set(verified.map((v) => v.incarnation))).toEqual(new Set([1]));

    // The control plane's records and the host's holders agree.
    const infoA = await call(h.admin.getAgent.bind(h.admin), { agentId: 'A' });
    const infoB = await call(h.admin.getAgent.bind(h.admin), { agentId: 'B' });
    expect(infoA.agent?.generation).toBe(steps);
    expect(infoB.agent?.generation).toBe(1);
    expect(host.agentCredential('A')?.generation).toBe(steps);
    expect(host.agentCredential('B')?.generation).toBe(1);
  });
});
