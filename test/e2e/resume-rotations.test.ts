/**
 * Resume rotations go through the rate-capped scheduler, soonest-expiring
 * first, rather than being signed inline while the Hello is processed: a host
 * whose agents' tokens all fell due while it was cut off gets them replaced at
 * the signing cap (here 2 a second, so six take at least two seconds of the
 * fake clock), in the order their tokens expire, which here is the reverse of
 * the order the host lists them in its Hello. Signed inline, all six would be
 * issued at one instant, in the Hello's order.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness } from '../support/harness.js';

const AGENT_TTL_MS = 60_000;
const MAX_ROTATIONS_PER_SECOND = 2;
const AGENT_IDS = ['resume-0', 'resume-1', 'resume-2', 'resume-3', 'resume-4', 'resume-5'] as const;

describe('resume rotations', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await proxy?.close();
    proxy = undefined;
  });

  it('are made by the rate-capped scheduler, soonest-expiring first, not all at once inside the Hello', async () => {
    // One rotation at a time, so the issues come in the order the scheduler started them: two started
    // together (the bucket's burst) may commit in either order on a store with concurrent writers (PostgreSQL).
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, maxRotationsPerSecond: MAX_ROTATIONS_PER_SECOND, maxConcurrentRotations: 1 });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;
    const { host, hostId } = await h.startHost('resumer', { target: p.target });
    // Started in this order (the order of the host's Hello)...
    for (const agentId of AGENT_IDS) await h.dispatch(host, hostId, agentId);
    // ...then rotated by hand in the reverse order, a second apart, so the last listed expires first.
    const expiresAtMs = new Map<string, number>();
    const applied = new Set<string>();
    host.events.on('rotation-applied', (e) => applied.add(e.agentId));
    for (const agentId of [...AGENT_IDS].reverse()) {
      h.clock.advance(1_000);
      const rotated = await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId });
      expiresAtMs.set(agentId, rotated.expiresAtMs);
    }
    // Held by the host before it is cut off (else it would resume behind, and be ranked by the token it holds).
    await advanceUntil(h.clock, 10, () => applied.size === AGENT_IDS.length && h.cp.isSettled(), 'the hand rotations to be applied');

    // Cut off past every token's latest rotation point (60 % of its life), well short of its expiry.
    p.refuseNew();
    p.cutAll();
    const latestDueAtMs = Math.max(...expiresAtMs.values()) - AGENT_TTL_MS * 0.4;
    await advanceUntil(h.clock, 1_000, () => h.clock.now() >= latestDueAtMs && host.state !== 'connected', 'the rotations to fall due while cut off');
    const issued: { agentId: string; atMs: number }[] = [];
    h.cp.events.on('credential-issued', (e) => void (e.agentId !== '' && issued.push({ agentId: e.agentId, atMs: h.clock.now() })));
    p.heal();
    await advanceUntil(h.clock, 10, () => issued.length >= AGENT_IDS.length && h.cp.isSettled(), 'every resume rotation');

    const soonestFirst = [...expiresAtMs].sort(([, a], [, b]) => a - b).map(([agentId]) => agentId);
    expect(soonestFirst).toEqual([...AGENT_IDS].reverse());
    expect(issued.map((i) => i.agentId)).toEqual(soonestFirst);
    // At the cap: the bucket's two at once, then one every half second (2 s of fake clock in all; an
    // issue is seen up to a few clock steps after the scheduler started it, so allow half of that).
    // Signed inline they would all come at one instant.
    const firstAtMs = issued[0]?.atMs ?? Number.NaN;
    const lastAtMs = issued.at(-1)?.atMs ?? Number.NaN;
    const atCapMs = ((AGENT_IDS.length - MAX_ROTATIONS_PER_SECOND) * 1_000) / MAX_ROTATIONS_PER_SECOND;
    expect(lastAtMs - firstAtMs).toBeGreaterThanOrEqual(atCapMs / 2);
    expect(host.state).toBe('connected');
  });
});
