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
