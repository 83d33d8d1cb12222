/**
 * Show 7 (precision): at the floor agent TTL (10 s), through the real control
 * plane and a real host on one fake clock that starts off a whole second, the
 * clock is stepped exactly onto each timer's due time, so a rotation is applied
 * at the very instant it fell due. Over many rotations:
 * - every replaced token still had at least 40 % of the TTL to live when its
 *   replacement was applied on the host;
 * - every fresh token arrived with at least the whole TTL to live (`exp` is
 *   rounded up, never down);
 * - rotations are at least half a TTL apart (due times count from the issue
 *   time in milliseconds; a floored `iat` made them fall due up to a second early).
 */
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { SERVE_DURATION_BOUNDS } from '../../control-plane/cli/serve-command.js';
import { FakeClock } from '../support/fake-clock.js';
import { Harness } from '../support/harness.js';
import { waitUntil } from '../support/wait.js';

const TTL_MS = SERVE_DURATION_BOUNDS.agentTokenTtl.minMs;
const ROTATIONS = 200;
/** Timer steps at most: a rotation every half TTL or so, a few host and control-plane timers in between. */
const MAX_STEPS = ROTATIONS * 40;
const AGENT_ID = 'precise';

/** A seeded uniform source in [0, 1) (mulberry32), so the jitter covers the window reproducibly. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

describe('rotation precision at the floor TTL', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('replaces every token with at least 40 % of its life left, each fresh one living a whole TTL, half a TTL apart', async () => {
    expect(TTL_MS).toBe(10_000);
    // Off a whole second, so a floored iat would cost each token most of a second.
    const clock = new FakeClock(1_800_000_000_730);
    harness = await Harness.start({ clock, agentTokenTtlMs: TTL_MS, clockToleranceMs: 0, heartbeatIntervalMs: 5_000, random: seeded(7) });
    const { host, hostId } = await harness.startHost('precision-host');
    await harness.dispatch(host, hostId, AGENT_ID);

    const initial = host.agentCredential(AGENT_ID);
    if (initial === undefined) throw new Error('agent not running');
    let held = { ...initial, appliedAtMs: clock.now() };
    const replaced: { generation: number; leftMs: number }[] = [];
    const fresh: { generation: number; lifeMs: number; sincePreviousMs: number }[] = [];
    const onApplied = (e: { agentId: string; generation: number }): void => {
      if (e.agentId !== AGENT_ID) return;
      const now = clock.now();
      const current = host.agentCredential(AGENT_ID);
      if (current === undefined) return;
      replaced.push({ generation: held.generation, leftMs: held.expiresAtMs - now });
      fresh.push({ generation: current.generation, lifeMs: current.expiresAtMs - now, sincePreviousMs: now - held.appliedAtMs });
      held = { ...current, appliedAtMs: now };
    };
    host.events.on('rotation-applied', onApplied);
    onTestFinished(() => void host.events.off('rotation-applied', onApplied));

    const cp = harness.cp;
    const store = harness.store;
    for (let step = 0; replaced.length < ROTATIONS; step++) {
      expect(step, 'timer steps').toBeLessThan(MAX_STEPS);
      const next = clock.nextTimerDueAtMs;
      if (next === undefined) throw new Error('no timer waiting: nothing would ever rotate');
      clock.advance(Math.max(0, next - clock.now()));
      // Time stands still until the control plane is settled and the host holds what was issued last.
      await waitUntil(
        async () => cp.isSettled() && host.agentCredential(AGENT_ID)?.generation === (await store.getAgent(AGENT_ID))?.generation,
        `step ${step}: a settled control plane and the holder at the issued generation`,
      );
    }

    const short = replaced.filter((r) => r.leftMs < 0.4 * TTL_MS);
    expect(short, 'tokens replaced with less than 40 % of the TTL left').toEqual([]);
    const shortLived = fresh.filter((f) => f.lifeMs < TTL_MS);
    expect(shortLived, 'fresh tokens arriving with less than a TTL to live').toEqual([]);
    const early = fresh.filter((f) => f.sincePreviousMs < 0.5 * TTL_MS);
    expect(early, 'rotations less than half a TTL after the previous one').toEqual([]);
    // The margin is not slack in the test: with this seed the jitter reaches the window's late end.
    expect(Math.min(...replaced.map((r) => r.leftMs))).toBeLessThan(0.42 * TTL_MS);
  });
});
