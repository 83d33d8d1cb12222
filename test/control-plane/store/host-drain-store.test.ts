/**
 * The store's side of a drain: the drain state (and the host's schedulable
 * flag with it) is one write, and a move's reserved room counts in its target's
 * load from the reservation until placeAgent turns it into the agent's place.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NotFoundError } from '../../../common/errors.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { agent, host, NOW } from '../../support/store-records.js';

describe('SqliteStore drains and move reservations', () => {
  let dir: string;
  let store: SqliteStore;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tether-drain-store-'));
    store = SqliteStore.open(join(dir, 'tether.db'));
    await store.insertHost(host('from', { state: 'active' }));
    await store.insertHost(host('to', { state: 'active', capacity: 2 }));
  });

  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function load(hostId: string): Promise<number | undefined> {
    return (await store.getHostLoads([hostId])).get(hostId)?.load;
  }

  it('keeps a drain with the host unschedulable, and an uncordon undoes both', async () => {
    expect(await store.setHostDrain('from', 'draining', NOW)).toBeUndefined();
    expect((await store.getHost('from'))?.isSchedulable).toBe(false);
    expect(await store.setHostDrain('from', 'drained', NOW + 5)).toMatchObject({ state: 'draining', startedAtMs: NOW });
    expect(await store.listHostDrains()).toEqual([{ hostId: 'from', state: 'drained', startedAtMs: NOW, updatedAtMs: NOW + 5 }]);
    expect(await store.setHostDrain('from', null, NOW + 9)).toMatchObject({ state: 'drained' });
    expect((await store.getHost('from'))?.isSchedulable).toBe(true);
    expect(await store.getHostDrain('from')).toBeUndefined();
    await expect(store.setHostDrain('nobody', 'draining', NOW)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('counts reserved room in the target load, refuses past capacity, and turns the reservation into the place', async () => {
    for (const id of ['m1', 'm2', 'm3']) await store.insertAgent(agent(id, { hostId: 'from' }));
    expect(await load('from')).toBe(3);
    expect(await store.reserveMove('m1', 'from', 'to', 1, NOW)).toBe('reserved');
    expect(await store.reserveMove('m1', 'from', 'to', 1, NOW)).toBe('agent-changed');
    expect(await store.reserveMove('m2', 'from', 'to', 2, NOW)).toBe('agent-changed');
    expect(await store.reserveMove('m2', 'from', 'to', 1, NOW)).toBe('reserved');
    expect(await load('to')).toBe(2);
    // Full with reservations alone: neither a third move nor a placement gets in.
    expect(await store.reserveMove('m3', 'from', 'to', 1, NOW)).toBe('host-full');
    await store.insertAgent(agent('new', { state: 'pending', hostId: null, incarnation: 0 }));
    expect((await store.placeAgent('new', { hostId: 'to', state: 'starting', incarnation: 1 }, { incarnation: 0 })).outcome).toBe('host-full');

    // m1's move completes: its reserved room becomes its place (the target's load unchanged, the source's down one).
    const placed = await store.placeAgent('m1', { hostId: 'to', state: 'starting', incarnation: 2 }, { incarnation: 1 });
    expect(placed.outcome).toBe('placed');
    expect(await store.getMove('m1')).toBeUndefined();
    expect([await load('from'), await load('to')]).toEqual([2, 2]);
    // m2's is given up: its room is free again.
    await store.releaseMove('m2');
    expect([await load('from'), await load('to')]).toEqual([2, 1]);
    expect(await store.listMoves()).toEqual([]);
    // A cordoned target takes no reservation.
    await store.setHostDrain('to', 'draining', NOW);
    expect(await store.reserveMove('m3', 'from', 'to', 1, NOW)).toBe('host-unavailable');
  });
});
