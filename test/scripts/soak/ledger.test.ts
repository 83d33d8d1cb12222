import { describe, expect, it } from 'vitest';
import { Ledger } from '../../../scripts/soak/ledger.js';

describe('soak ledger: a host that fences itself', () => {
  // Host 0 was in a scheduled outage longer than TTL/3 from 100 to 200; no other host, no other time.
  const longOutageOnHost0 = (slot: number, atMs: number): boolean => slot === 0 && atMs >= 100 && atMs <= 200;

  it('counts an agent started again on the host that fenced itself in a scheduled outage apart, not as an incident', () => {
    const ledger = new Ledger(['a', 'b'], () => false);
    ledger.onInstanceStart('a', 0, 1);
    ledger.onInstanceStart('b', 1, 1);
    ledger.onSelfFenced(0, 1, ['a'], 150);
    ledger.onInstanceStart('a', 0, 1);
    ledger.judgeSelfFences(longOutageOnHost0);
    expect(ledger.counts).toMatchObject({ selfFences: 1, selfFencesUnexcused: 0, restartsAfterSelfFence: 1, restartsWhileHostLived: 0 });
    expect(ledger.incidents).toEqual([]);
  });

  it('calls a self-fence outside a scheduled outage an incident, and a restart of an agent it did not fence one too', () => {
    const ledger = new Ledger(['a', 'b'], () => false);
    ledger.onInstanceStart('a', 1, 1);
    ledger.onInstanceStart('b', 1, 1);
    ledger.onSelfFenced(1, 1, ['a'], 150);
    ledger.onInstanceStart('b', 1, 1);
    ledger.judgeSelfFences(longOutageOnHost0);
    expect(ledger.counts).toMatchObject({ selfFences: 0, selfFencesUnexcused: 1, restartsWhileHostLived: 1 });
    expect(ledger.incidents).toHaveLength(2);
  });
});

describe('soak ledger: agents that move, and two live copies at once', () => {
  const payload = (agentId: string, index: number): Buffer => Ledger.payload(agentId, index);

  it('counts a move of an ensured agent apart, and what it takes again after the move is a redelivery, not a duplicate', () => {
    const ledger = new Ledger(['a'], () => false, new Set(['a']));
    const old = ledger.onInstanceStart('a', 0, 1);
    ledger.onReceipt(old, 1, payload('a', 0), 1_000);
    ledger.onReceipt(old, 2, payload('a', 1), 1_100);
    old.isDead = true;
    const moved = ledger.onInstanceStart('a', 1, 1);
    ledger.onReceipt(moved, 2, payload('a', 1), 50_000);
    ledger.onReceipt(moved, 3, payload('a', 2), 50_100);
    ledger.judgeOverlaps();
    expect(ledger.counts).toMatchObject({ moves: 1, pinnedMoved: 0, movesBeforeOldStopped: 0, redeliveredAfterHostCrash: 1, duplicatedIntoAgent: 0, overlappingReceipts: 0, outOfOrder: 0 });
    expect(ledger.incidents).toEqual([]);
  });

  it('counts what an agent moved off a host that fenced itself takes again as a redelivery, not a duplicate', () => {
    const ledger = new Ledger(['a'], () => false, new Set(['a']));
    const old = ledger.onInstanceStart('a', 0, 1);
    ledger.onReceipt(old, 1, payload('a', 0), 1_000);
    ledger.onSelfFenced(0, 1, ['a'], 20_000);
    ledger.onReceipt(ledger.onInstanceStart('a', 2, 1), 1, payload('a', 0), 50_000);
    ledger.judgeSelfFences(() => true);
    ledger.judgeOverlaps();
    expect(ledger.counts).toMatchObject({ moves: 1, movesBeforeOldStopped: 0, restartsAfterSelfFence: 0, redeliveredAfterHostCrash: 1, duplicatedIntoAgent: 0 });
    expect(ledger.incidents).toEqual([]);
  });

  it('calls a dispatched agent started on another slot an incident', () => {
    const ledger = new Ledger(['a'], () => false, new Set());
    ledger.onInstanceStart('a', 0, 1).isDead = true;
    ledger.onInstanceStart('a', 1, 1);
    expect(ledger.counts.pinnedMoved).toBe(1);
    expect(ledger.incidents).toHaveLength(1);
  });

  it('finds two instances that took messages in overlapping stretches of time', () => {
    const ledger = new Ledger(['a'], () => false, new Set(['a']));
    const old = ledger.onInstanceStart('a', 0, 1);
    ledger.onReceipt(old, 1, payload('a', 0), 1_000);
    const moved = ledger.onInstanceStart('a', 1, 1);
    ledger.onReceipt(moved, 2, payload('a', 1), 2_000);
    ledger.onReceipt(old, 3, payload('a', 2), 3_000);
    ledger.judgeOverlaps();
    expect(ledger.counts.overlappingReceipts).toBe(1);
    expect(ledger.counts.movesBeforeOldStopped).toBe(1);
  });

  it('does not call stretches that only touch, or follow one another, overlapping', () => {
    const ledger = new Ledger(['a'], () => false, new Set(['a']));
    const old = ledger.onInstanceStart('a', 0, 1);
    ledger.onReceipt(old, 1, payload('a', 0), 1_000);
    ledger.onReceipt(old, 2, payload('a', 1), 2_000);
    ledger.onToolCall(old, 'as-itself', 'ok', 1_500, '', 1_000);
    ledger.onToolCall(old, 'as-itself', 'ok', 30_000, '', 2_000);
    ledger.onInstanceStopped(old);
    const moved = ledger.onInstanceStart('a', 1, 1);
    ledger.onReceipt(moved, 3, payload('a', 2), 2_000);
    // Its first call started before the old one's last call ended (a slow answer), but ended after that one started.
    ledger.onToolCall(moved, 'as-itself', 'ok', 2_500, '', 1_900);
    ledger.judgeOverlaps();
    expect(ledger.counts).toMatchObject({ overlappingReceipts: 0, overlappingValidity: 0, movesBeforeOldStopped: 0 });
  });

  it('finds two instances whose own calls were certainly accepted in overlapping stretches', () => {
    const ledger = new Ledger(['a'], () => false, new Set(['a']));
    const old = ledger.onInstanceStart('a', 0, 1);
    ledger.onToolCall(old, 'as-itself', 'ok', 1_100, '', 1_000);
    const moved = ledger.onInstanceStart('a', 1, 1);
    ledger.onToolCall(moved, 'as-itself', 'ok', 2_100, '', 2_000);
    ledger.onToolCall(old, 'as-itself', 'ok', 3_100, '', 3_000);
    ledger.onToolCall(moved, 'as-itself', 'ok', 4_100, '', 4_000);
    // Refused calls and calls as another agent are no evidence of validity.
    ledger.onToolCall(old, 'as-itself', 'unavailable', 9_100, '', 9_000);
    ledger.judgeOverlaps();
    expect(ledger.counts.overlappingValidity).toBe(1);
  });

  it('wants a new incarnation after a move, where WhoAmI named one on both sides', () => {
    const ledger = new Ledger(['a', 'b'], () => false, new Set(['a', 'b']));
    const a1 = ledger.onInstanceStart('a', 0, 1);
    ledger.onIncarnation(a1, 3);
    a1.isDead = true;
    ledger.onIncarnation(ledger.onInstanceStart('a', 1, 1), 3);
    const b1 = ledger.onInstanceStart('b', 0, 1);
    ledger.onIncarnation(b1, 3);
    b1.isDead = true;
    ledger.onIncarnation(ledger.onInstanceStart('b', 1, 1), 4);
    ledger.judgeOverlaps();
    expect(ledger.counts.movesWithoutNewIncarnation).toBe(1);
    expect(ledger.incidents.join('\n')).toContain('a moved from host 0 to 1');
  });
});

describe('soak ledger: a drain hands over from the acknowledged seq', () => {
  it('calls a message taken again after a drain moved the agent a duplicate, and one taken again after a host death not', () => {
    const ledger = new Ledger(['a', 'b'], () => false, new Set(['a', 'b']));
    for (const agentId of ['a', 'b']) {
      const old = ledger.onInstanceStart(agentId, 0, 1);
      ledger.onReceipt(old, 1, Ledger.payload(agentId, 0), 1_000);
    }
    ledger.onDrainStarted('a');
    (ledger.current('a') as { isStopped?: boolean }).isStopped = true;
    ledger.onReceipt(ledger.onInstanceStart('a', 1, 1), 1, Ledger.payload('a', 0), 5_000);
    ledger.onDrainEnded('a');
    (ledger.current('b') as { isDead: boolean }).isDead = true;
    ledger.onReceipt(ledger.onInstanceStart('b', 1, 1), 1, Ledger.payload('b', 0), 5_000);
    expect(ledger.counts).toMatchObject({ moves: 2, movesByDrain: 1, duplicatedIntoAgent: 1, redeliveredAfterHostCrash: 1 });
    expect(ledger.incidents).toEqual(['a received seq 1 again on host 1#1']);
  });
});
