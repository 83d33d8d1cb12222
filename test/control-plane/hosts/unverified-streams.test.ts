/**
 * UnverifiedStreams' slots: bounded per connection and over all, each permit
 * freeing its slot once however often it is released, and a connection's
 * entry gone with its last slot.
 */
import { describe, expect, it } from 'vitest';
import { UnverifiedStreams } from '../../../control-plane/hosts/unverified-streams.js';

describe('UnverifiedStreams', () => {
  it('bounds slots per connection and over all; a permit frees its slot once, and the table forgets an empty connection', () => {
    const streams = new UnverifiedStreams({ maxPerConnection: 2, maxTotal: 3 });
    const a1 = streams.tryAdmit('a');
    const a2 = streams.tryAdmit('a');
    expect(a1).toBeDefined();
    expect(a2).toBeDefined();
    expect(streams.tryAdmit('a')).toBeUndefined();
    const b1 = streams.tryAdmit('b');
    expect(b1).toBeDefined();
    expect(streams.tryAdmit('c')).toBeUndefined();
    expect(streams.held).toBe(3);
    expect(streams.refusedTotal).toBe(2);
    expect(streams.connections).toBe(2);

    a1?.release();
    a1?.release();
    expect(streams.held).toBe(2);
    expect(streams.connections).toBe(2);
    a2?.release();
    expect(streams.held).toBe(1);
    expect(streams.connections).toBe(1);
    b1?.release();
    b1?.release();
    expect(streams.held).toBe(0);
    expect(streams.connections).toBe(0);
    expect(streams.peakHeld).toBe(3);
    // Freed slots are there to take again; each permit is its own.
    const again = [streams.tryAdmit('a'), streams.tryAdmit('a')];
    expect(again.every((permit) => permit !== undefined)).toBe(true);
    again[0]?.release();
    expect(streams.held).toBe(1);
  });
});
