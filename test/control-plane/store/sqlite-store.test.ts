import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AlreadyExistsError, ClosedError, FailedPreconditionError, ResourceExhaustedError } from '../../../common/errors.js';
import { MAX_TRANSITIONS_PER_AGENT, type AppendResult, type MessageSender } from '../../../control-plane/store/store.js';
import { SqliteStore, type SqliteStoreOptions } from '../../../control-plane/store/sqlite-store.js';
import { agent, host, NOW, signingKey } from '../../support/store-records.js';

describe('SqliteStore', () => {
  let dir: string;
  let path: string;
  let stores: SqliteStore[];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-store-'));
    path = join(dir, 'tether.db');
    stores = [];
  });

  afterEach(async () => {
    for (const store of stores) await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function open(options?: SqliteStoreOptions): SqliteStore {
    const store = SqliteStore.open(path, options);
    stores.push(store);
    return store;
  }

  describe('agents', () => {
    it('inserts and gets an agent, structured fields included', async () => {
      const store = open();
      const record = agent('a1');
      await store.insertAgent(record);
      expect(await store.getAgent('a1')).toEqual(record);
      expect(await store.getAgent('nobody')).toBeUndefined();
    });

    it('refuses a duplicate id with AlreadyExistsError', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      await expect(store.insertAgent(agent('a1', { name: 'other' }))).rejects.toBeInstanceOf(AlreadyExistsError);
      expect((await store.getAgent('a1'))?.name).toBe('a1');
    });

    it('updates an agent and returns the new record', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      const updated = await store.updateAgent('a1', { state: 'stalled', detail: 'missed heartbeats', hostLabels: [], updatedAtMs: NOW + 1 });
      expect(updated).toEqual(agent('a1', { state: 'stalled', detail: 'missed heartbeats', hostLabels: [], updatedAtMs: NOW + 1 }));
      expect(await store.getAgent('a1')).toEqual(updated);
    });

    it('returns undefined when updating an agent that does not exist', async () => {
      const store = open();
      expect(await store.updateAgent('nobody', { state: 'stopped' })).toBeUndefined();
    });

    it.each([
      { what: 'the generation matches', expect: { generation: 1 }, isApplied: true },
      { what: 'the generation is wrong', expect: { generation: 2 }, isApplied: false },
      { what: 'the incarnation matches', expect: { incarnation: 1 }, isApplied: true },
      { what: 'the incarnation is wrong', expect: { incarnation: 0 }, isApplied: false },
      { what: 'the state is one of those expected', expect: { states: ['starting', 'running'] as const }, isApplied: true },
      { what: 'the state is not one of those expected', expect: { states: ['stopped'] as const }, isApplied: false },
      { what: 'no state is expected at all', expect: { states: [] as const }, isApplied: false },
      { what: 'all of them hold', expect: { generation: 1, incarnation: 1, states: ['running'] as const }, isApplied: true },
      { what: 'one of them fails', expect: { generation: 1, incarnation: 2, states: ['running'] as const }, isApplied: false },
    ])('compare-and-set applies only when $what', async ({ expect: expectation, isApplied }) => {
      const store = open();
      await store.insertAgent(agent('a1'));
      const result = await store.updateAgent('a1', { generation: 2, tokenId: 'jti-2' }, expectation);
      const stored = await store.getAgent('a1');
      if (isApplied) {
        expect(result?.generation).toBe(2);
        expect(stored?.tokenId).toBe('jti-2');
      } else {
        expect(result).toBeUndefined();
        expect(stored).toEqual(agent('a1'));
      }
    });

    it('pages through agents in id order, with filters', async () => {
      const store = open();
      for (let i = 0; i < 7; i++) {
        await store.insertAgent(agent(`a${i}`, { hostId: i % 2 === 0 ? 'host-even' : 'host-odd', state: i < 5 ? 'running' : 'stopped' }));
      }
      const ids: string[][] = [];
      let afterId: string | null = null;
      for (let pages = 0; pages < 10; pages++) {
        const page: Awaited<ReturnType<SqliteStore['listAgents']>> = await store.listAgents({}, afterId, 3);
        ids.push(page.items.map((a) => a.agentId));
        afterId = page.nextAfterId;
        if (afterId === null) break;
      }
      expect(ids).toEqual([['a0', 'a1', 'a2'], ['a3', 'a4', 'a5'], ['a6']]);

      const exact = await store.listAgents({}, null, 7);
      expect(exact.items).toHaveLength(7);
      expect(exact.nextAfterId).toBeNull();

      const even = await store.listAgents({ hostId: 'host-even' }, null, 10);
      expect(even.items.map((a) => a.agentId)).toEqual(['a0', 'a2', 'a4', 'a6']);
      const evenRunning = await store.listAgents({ hostId: 'host-even', states: ['running'] }, null, 10);
      expect(evenRunning.items.map((a) => a.agentId)).toEqual(['a0', 'a2', 'a4']);
      const none = await store.listAgents({ states: [] }, null, 10);
      expect(none.items).toEqual([]);
    });

    it('reads only the credential columns of an agent, and undefined for none', async () => {
      const store = open();
      const record = agent('a1', { hostId: 'h1', incarnation: 3, generation: 5, expiresAtMs: NOW + 9, previousExpiresAtMs: NOW + 4, ackedGeneration: 4 });
      await store.insertAgent(record);
      expect(await store.getAgentCredentialState('a1')).toEqual({
        agentId: 'a1',
        state: record.state,
        hostId: 'h1',
        incarnation: 3,
        generation: 5,
        expiresAtMs: NOW + 9,
        previousExpiresAtMs: NOW + 4,
        ackedGeneration: 4,
      });
      expect(await store.getAgentCredentialState('nobody')).toBeUndefined();
    });

    it('patches an agent only when it meets the expectation, without reading it back', async () => {
      const store = open();
      await store.insertAgent(agent('a1', { incarnation: 2, generation: 7 }));
      expect(await store.patchAgent('a1', { generation: 8, tokenId: 't8' }, { incarnation: 2, generation: 6 })).toBe(false);
      expect(await store.patchAgent('a1', { generation: 8, tokenId: 't8' }, { incarnation: 1, generation: 7 })).toBe(false);
      expect(await store.patchAgent('a1', { generation: 8 }, { states: ['stopped'] })).toBe(false);
      expect(await store.patchAgent('nobody', { generation: 8 }, {})).toBe(false);
      expect(await store.getAgent('a1')).toMatchObject({ generation: 7, tokenId: agent('a1').tokenId });
      expect(await store.patchAgent('a1', { generation: 8, tokenId: 't8' }, { incarnation: 2, generation: 7, states: ['running'] })).toBe(true);
      expect(await store.getAgent('a1')).toEqual(agent('a1', { incarnation: 2, generation: 8, tokenId: 't8' }));
      // Decided against the writes queued before it in the same commit: of two writers expecting generation 8, one wins.
      const [first, second] = await Promise.all([
        store.patchAgent('a1', { generation: 9 }, { generation: 8 }),
        store.patchAgent('a1', { generation: 9 }, { generation: 8 }),
      ]);
      expect([first, second]).toEqual([true, false]);
      // A transition goes through updateAgent, which records it in the agent's history.
      await expect(store.patchAgent('a1', { state: 'stopped' }, {})).rejects.toThrow(/use updateAgent/);
      await expect(store.patchAgent('a1', { hostId: 'h2' }, {})).rejects.toThrow(/use updateAgent/);
      await expect(store.patchAgent('a1', { incarnation: 3 }, {})).rejects.toThrow(/use updateAgent/);
      expect(await store.getAgent('a1')).toMatchObject({ state: 'running', hostId: agent('a1').hostId, incarnation: 2 });
      // An empty patch answers whether the expectation holds.
      expect(await store.patchAgent('a1', {}, { generation: 9 })).toBe(true);
      expect(await store.patchAgent('a1', {}, { generation: 8 })).toBe(false);
    });

    it('counts live agents by host', async () => {
      const store = open();
      await store.insertAgent(agent('a1', { hostId: 'h1' }));
      await store.insertAgent(agent('a2', { hostId: 'h1', state: 'starting' }));
      await store.insertAgent(agent('a3', { hostId: 'h2' }));
      await store.insertAgent(agent('a4', { hostId: 'h2', state: 'stopped' }));
      await store.insertAgent(agent('a5', { hostId: null, state: 'pending' }));
      expect(await store.countAgentsByHost(['starting', 'running'])).toEqual(new Map([['h1', 2], ['h2', 1]]));
    });
  });

  describe('agent transitions', () => {
    it('records each change of state, host or incarnation with its reason, in the same write, and nothing else', async () => {
      const store = open();
      await store.insertAgent(agent('a1', { state: 'pending', hostId: null, incarnation: 0 }), 'dispatched');
      await store.updateAgent('a1', { detail: 'no host is connected', updatedAtMs: NOW + 1 });
      await store.placeAgent('a1', { hostId: 'h1', state: 'starting', incarnation: 1, updatedAtMs: NOW + 2 }, {}, 'placed');
      await store.insertHost(host('h1'));
      expect((await store.placeAgent('a1', { hostId: 'h1', state: 'starting', incarnation: 1, updatedAtMs: NOW + 2 }, {}, 'placed')).outcome).toBe('placed');
      await store.updateAgent('a1', { generation: 2, updatedAtMs: NOW + 3 }, {}, 'a rotation is no transition');
      await store.updateAgent('a1', { state: 'running', updatedAtMs: NOW + 4 }, { states: ['starting'] }, 'reported started');
      // A refused conditional update records nothing.
      await store.updateAgent('a1', { state: 'stopped', updatedAtMs: NOW + 5 }, { states: ['pending'] }, 'never');
      // No reason given: the detail is the reason.
      await store.updateAgent('a1', { state: 'failed', detail: 'exit code 3', updatedAtMs: NOW + 6 });
      expect(await store.listAgentTransitions('a1', 50)).toEqual([
        { agentId: 'a1', atMs: NOW, fromState: null, toState: 'pending', hostId: null, incarnation: 0, reason: 'dispatched' },
        { agentId: 'a1', atMs: NOW + 2, fromState: 'pending', toState: 'starting', hostId: 'h1', incarnation: 1, reason: 'placed' },
        { agentId: 'a1', atMs: NOW + 4, fromState: 'starting', toState: 'running', hostId: 'h1', incarnation: 1, reason: 'reported started' },
        { agentId: 'a1', atMs: NOW + 6, fromState: 'running', toState: 'failed', hostId: 'h1', incarnation: 1, reason: 'exit code 3' },
      ]);
      expect(await store.listAgentTransitions('nobody', 50)).toEqual([]);
    });

    it(`keeps the last ${MAX_TRANSITIONS_PER_AGENT} transitions of each agent, whatever the others do`, async () => {
      const store = open();
      await store.insertAgent(agent('busy', { incarnation: 0 }), 'created');
      await store.insertAgent(agent('quiet'), 'created');
      for (let i = 1; i <= MAX_TRANSITIONS_PER_AGENT + 20; i++) await store.updateAgent('busy', { incarnation: i, updatedAtMs: NOW + i }, {}, `move ${i}`);
      const kept = await store.listAgentTransitions('busy', 1_000);
      expect(kept).toHaveLength(MAX_TRANSITIONS_PER_AGENT);
      expect(kept[0]?.reason).toBe('move 21');
      expect(kept.at(-1)?.reason).toBe(`move ${MAX_TRANSITIONS_PER_AGENT + 20}`);
      expect((await store.listAgentTransitions('busy', 3)).map((t) => t.incarnation)).toEqual([68, 69, 70]);
      expect(await store.listAgentTransitions('quiet', 50)).toHaveLength(1);
      // What is kept in the file, not only what is listed, is bounded.
      const raw = new Database(path, { readonly: true });
      try {
        expect(raw.prepare("SELECT COUNT(*) AS n FROM agent_state_history WHERE agent_id = 'busy'").get()).toEqual({ n: MAX_TRANSITIONS_PER_AGENT });
      } finally {
        raw.close();
      }
    });
  });

  describe('hosts', () => {
    it('inserts, gets, updates and refuses duplicates', async () => {
      const store = open();
      await store.insertHost(host('h1'));
      expect(await store.getHost('h1')).toEqual(host('h1'));
      await expect(store.insertHost(host('h1'))).rejects.toBeInstanceOf(AlreadyExistsError);
      const updated = await store.updateHost('h1', { state: 'active', joinSecretHash: null, labels: [], capacity: 4 });
      expect(updated).toEqual(host('h1', { state: 'active', joinSecretHash: null, labels: [], capacity: 4 }));
      expect(await store.updateHost('nobody', { capacity: 1 })).toBeUndefined();
    });

    it('updates a host only while what the writer read still holds', async () => {
      const store = open();
      await store.insertHost(host('h1', { credentialGeneration: 3, minValidGeneration: 2, joinLeaseSessionId: 's1' }));
      // Each condition, failing alone, leaves the host untouched.
      expect(await store.updateHost('h1', { credentialGeneration: 4 }, { credentialGeneration: 2 })).toBeUndefined();
      expect(await store.updateHost('h1', { minValidGeneration: 3 }, { minValidGeneration: 1 })).toBeUndefined();
      expect(await store.updateHost('h1', { state: 'active' }, { states: ['active', 'revoked'] })).toBeUndefined();
      expect(await store.updateHost('h1', { state: 'active' }, { joinLeaseSessionId: 's2' })).toBeUndefined();
      expect(await store.updateHost('h1', { state: 'active' }, { joinLeaseSessionId: null })).toBeUndefined();
      expect(await store.getHost('h1')).toEqual(host('h1', { credentialGeneration: 3, minValidGeneration: 2, joinLeaseSessionId: 's1' }));
      // All holding: applied.
      const updated = await store.updateHost(
        'h1',
        { state: 'active', credentialGeneration: 4 },
        { states: ['enrolled'], credentialGeneration: 3, minValidGeneration: 2, joinLeaseSessionId: 's1' },
      );
      expect(updated).toMatchObject({ state: 'active', credentialGeneration: 4 });
      // Of two writers that read the same generation, the second finds it moved.
      expect(await store.updateHost('h1', { credentialGeneration: 4 }, { credentialGeneration: 3 })).toBeUndefined();
      expect(await store.updateHost('nobody', { capacity: 1 }, {})).toBeUndefined();
    });

    it('keeps each host\'s load (its live agents) through every agent write', async () => {
      const store = open();
      await store.insertHost(host('h1'));
      await store.insertHost(host('h2'));
      const loads = async (): Promise<number[]> => {
        const map = await store.getHostLoads(['h1', 'h2', 'nobody']);
        expect(map.has('nobody')).toBe(false);
        return [map.get('h1')?.load ?? -1, map.get('h2')?.load ?? -1];
      };
      await store.insertAgent(agent('a1', { hostId: 'h1', state: 'running' }));
      await store.insertAgent(agent('a2', { hostId: 'h1', state: 'starting' }));
      await store.insertAgent(agent('a3', { hostId: 'h1', state: 'stopped' }));
      await store.insertAgent(agent('a4', { hostId: null, state: 'pending' }));
      expect(await loads()).toEqual([2, 0]);
      await store.updateAgent('a1', { state: 'stalled' });
      expect(await loads()).toEqual([2, 0]);
      await store.updateAgent('a1', { hostId: 'h2' });
      expect(await loads()).toEqual([1, 1]);
      await store.updateAgent('a2', { state: 'exited' });
      expect(await loads()).toEqual([0, 1]);
      await store.updateAgent('a1', { state: 'pending', hostId: null });
      expect(await loads()).toEqual([0, 0]);
      await store.updateAgent('a4', { state: 'starting', hostId: 'h2' });
      await store.updateAgent('a3', { state: 'running' });
      expect(await loads()).toEqual([1, 1]);
      await store.updateAgent('a3', { detail: 'no move' });
      expect(await loads()).toEqual([1, 1]);
    });

    it('places an agent only while its host has room, counting an agent already there once', async () => {
      const store = open();
      await store.insertHost(host('h1', { capacity: 2 }));
      await store.insertHost(host('gone', { state: 'revoked' }));
      for (const id of ['a1', 'a2', 'a3']) await store.insertAgent(agent(id, { hostId: null, state: 'pending', generation: 0 }));
      const place = (agentId: string, hostId: string) =>
        store.placeAgent(agentId, { hostId, state: 'starting', generation: 1 }, { generation: 0, states: ['pending'] });
      expect((await place('a1', 'h1')).outcome).toBe('placed');
      expect(await place('a1', 'h1')).toEqual({ outcome: 'agent-changed' });
      expect((await place('a2', 'h1')).outcome).toBe('placed');
      expect(await place('a3', 'h1')).toEqual({ outcome: 'host-full' });
      expect(await place('a3', 'gone')).toEqual({ outcome: 'host-unavailable' });
      expect(await place('a3', 'nobody')).toEqual({ outcome: 'host-unavailable' });
      expect(await store.getAgent('a3')).toMatchObject({ state: 'pending', hostId: null, generation: 0 });
      // Restarting an agent the host already counts needs no room.
      const again = await store.placeAgent('a1', { hostId: 'h1', state: 'starting', incarnation: 2 }, { states: ['starting'] });
      expect(again.outcome).toBe('placed');
      // An end gives the place back.
      await store.updateAgent('a2', { state: 'stopped' });
      expect((await place('a3', 'h1')).outcome).toBe('placed');
      expect((await store.getHostLoads(['h1'])).get('h1')).toEqual({ hostId: 'h1', state: 'enrolled', capacity: 2, load: 2, isSchedulable: true });
    });

    it('places no new agent on a host that is not schedulable, and keeps the ones it runs', async () => {
      const store = open();
      await store.insertHost(host('h1', { isSchedulable: false }));
      expect((await store.getHost('h1'))?.isSchedulable).toBe(false);
      await store.insertAgent(agent('there', { hostId: 'h1', state: 'running' }));
      await store.insertAgent(agent('new', { hostId: null, state: 'pending', incarnation: 0 }));
      expect(await store.placeAgent('new', { hostId: 'h1', state: 'starting', incarnation: 1 }, { states: ['pending'] })).toEqual({ outcome: 'host-unavailable' });
      // Restarted in place (its host reconnected without it): it counts there already.
      expect((await store.placeAgent('there', { hostId: 'h1', state: 'starting', incarnation: 2 }, { states: ['running'] })).outcome).toBe('placed');
      // Uncordoned: it takes new agents again.
      expect((await store.updateHost('h1', { isSchedulable: true }))?.isSchedulable).toBe(true);
      expect((await store.getHostLoads(['h1'])).get('h1')?.isSchedulable).toBe(true);
      expect((await store.placeAgent('new', { hostId: 'h1', state: 'starting', incarnation: 1 }, { states: ['pending'] })).outcome).toBe('placed');
    });

    it('pages through hosts in id order', async () => {
      const store = open();
      for (const id of ['h3', 'h1', 'h4', 'h2', 'h0']) await store.insertHost(host(id));
      const first = await store.listHosts(null, 2);
      expect(first.items.map((h) => h.hostId)).toEqual(['h0', 'h1']);
      expect(first.nextAfterId).toBe('h1');
      const second = await store.listHosts(first.nextAfterId, 2);
      expect(second.items.map((h) => h.hostId)).toEqual(['h2', 'h3']);
      const last = await store.listHosts(second.nextAfterId, 2);
      expect(last.items.map((h) => h.hostId)).toEqual(['h4']);
      expect(last.nextAfterId).toBeNull();
    });
  });

  describe('leaseJoinToken', () => {
    const noneLive = (): boolean => false;

    it('leases an unexpired, unburnt, unleased join token', async () => {
      const store = open();
      await store.insertHost(host('h1'));
      const leased = await store.leaseJoinToken('h1', 's1', NOW, noneLive);
      expect(leased?.joinLeaseSessionId).toBe('s1');
      expect((await store.getHost('h1'))?.joinLeaseSessionId).toBe('s1');
    });

    it.each([
      { what: 'the host is unknown', hostId: 'nobody', record: host('h1'), nowMs: NOW },
      { what: 'the token has expired', hostId: 'h1', record: host('h1'), nowMs: NOW + 3_600_000 },
      { what: 'the token is burnt', hostId: 'h1', record: host('h1', { joinSecretHash: null }), nowMs: NOW },
      { what: 'the host is revoked', hostId: 'h1', record: host('h1', { state: 'revoked' }), nowMs: NOW },
    ])('refuses when $what', async ({ hostId, record, nowMs }) => {
      const store = open();
      await store.insertHost(record);
      expect(await store.leaseJoinToken(hostId, 's1', nowMs, noneLive)).toBeUndefined();
      expect((await store.getHost('h1'))?.joinLeaseSessionId).toBeNull();
    });

    it('refuses while the token is leased to a live session', async () => {
      const store = open();
      await store.insertHost(host('h1', { joinLeaseSessionId: 's1' }));
      const asked: string[] = [];
      const leased = await store.leaseJoinToken('h1', 's2', NOW, (sessionId) => {
        asked.push(sessionId);
        return sessionId === 's1';
      });
      expect(leased).toBeUndefined();
      expect(asked).toEqual(['s1']);
      expect((await store.getHost('h1'))?.joinLeaseSessionId).toBe('s1');
    });

    it('takes over a lease held by a dead session', async () => {
      const store = open();
      await store.insertHost(host('h1', { joinLeaseSessionId: 's1' }));
      const leased = await store.leaseJoinToken('h1', 's2', NOW, noneLive);
      expect(leased?.joinLeaseSessionId).toBe('s2');
    });

    it('gives one of two concurrent callers the lease', async () => {
      const store = open();
      await store.insertHost(host('h1'));
      const live = new Set<string>(['s1', 's2']);
      const results = await Promise.all([
        store.leaseJoinToken('h1', 's1', NOW, (id) => live.has(id)),
        store.leaseJoinToken('h1', 's2', NOW, (id) => live.has(id)),
      ]);
      expect(results.filter((r) => r !== undefined)).toHaveLength(1);
      const holder = (await store.getHost('h1'))?.joinLeaseSessionId;
      expect(results.find((r) => r !== undefined)?.joinLeaseSessionId).toBe(holder);
    });

    it('refuses a second store on the same file while the first holds a live lease', async () => {
      const first = open();
      const second = open();
      await first.insertHost(host('h1'));
      const live = new Set<string>();
      const isLive = (id: string): boolean => live.has(id);
      expect(await first.leaseJoinToken('h1', 's1', NOW, isLive)).toBeDefined();
      live.add('s1');
      expect(await second.leaseJoinToken('h1', 's2', NOW, isLive)).toBeUndefined();
    });
  });

  describe('outbox', () => {
    it('counts dead letters against the cap until they are purged or requeued', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      const append = async (ids: string[]): Promise<AppendResult[] | Error | undefined> =>
        (
          await store.applyOutboxBatch({
            appends: [
              {
                agentId: 'a1',
                sender: { kind: 'operator' },
                maxPending: 3,
                maxPendingBytes: 1024,
                messages: ids.map((id) => ({ id, contentType: 'text/plain', payload: Buffer.from(id), createdAtMs: NOW, idempotencyKey: null })),
              },
            ],
            acks: [],
          })
        )[0];
      expect(await append(['m1', 'm2', 'm3'])).toHaveLength(3);
      // m1 and m2 are dead-lettered; m3 is taken. Two dead letters still fill two of the three places.
      expect((await store.recordRefusal('a1', 1, 'no', 1))?.state).toBe('dead');
      expect((await store.recordRefusal('a1', 2, 'no', 1))?.state).toBe('dead');
      await store.applyOutboxBatch({ appends: [], acks: [{ agentId: 'a1', seq: 3 }] });
      expect(await append(['m4'])).toHaveLength(1);
      const full = await append(['m5']);
      expect(full).toBeInstanceOf(ResourceExhaustedError);
      expect((full as Error).message).toMatch(/3 unacknowledged or dead-lettered messages, at most 3/);
      await store.purgeMessage('a1', 1);
      expect(await append(['m5'])).toHaveLength(1);
      // A requeue moves a dead letter back to pending: it still takes a place.
      expect(await store.requeueMessage('a1', 2)).toBe(6);
      expect(await append(['m6'])).toBeInstanceOf(ResourceExhaustedError);
    });

    /** Appends one message per payload from `sender` to `agentId`; its results, or the error that refused it. */
    async function send(
      store: SqliteStore,
      agentId: string,
      sender: MessageSender,
      messages: { id: string; key?: string; bytes?: number }[],
      maxPendingBytes = 1024,
    ): Promise<AppendResult[] | Error | undefined> {
      const [result] = await store.applyOutboxBatch({
        appends: [
          {
            agentId,
            sender,
            maxPending: 100,
            maxPendingBytes,
            messages: messages.map(({ id, key, bytes }) => ({
              id,
              contentType: 'text/plain',
              payload: Buffer.alloc(bytes ?? 1, 7),
              createdAtMs: NOW,
              idempotencyKey: key ?? null,
            })),
          },
        ],
        acks: [],
      });
      return result;
    }

    /** The store's byte counter of `agentId`'s outbox and what its rows add up to, read on a connection of their own. */
    function outboxBytes(agentId: string): { counter: number; sum: number } {
      const db = new Database(path, { readonly: true });
      try {
        const counter = (db.prepare('SELECT outbox_bytes AS n FROM agents WHERE agent_id = ?').get(agentId) as { n: number }).n;
        const sum = (
          db.prepare("SELECT COALESCE(SUM(length(payload)), 0) AS n FROM messages WHERE agent_id = ? AND state IN ('pending', 'dead')").get(agentId) as { n: number }
        ).n;
        return { counter, sum };
      } finally {
        db.close();
      }
    }

    const alice: MessageSender = { kind: 'agent', agentId: 'alice' };
    const operator: MessageSender = { kind: 'operator' };

    it("scopes idempotency keys to the sender: an agent's key never answers the operator's send, nor the other way round", async () => {
      const store = open();
      await store.insertAgent(agent('bob'));
      expect(await send(store, 'bob', alice, [{ id: 'from-alice', key: 'K' }])).toEqual([{ id: 'from-alice', seq: 1, isDuplicate: false }]);
      // The operator's send with the same key is stored as its own message; nothing of alice's leaks into the answer.
      expect(await send(store, 'bob', operator, [{ id: 'from-operator', key: 'K' }])).toEqual([{ id: 'from-operator', seq: 2, isDuplicate: false }]);
      // Operator first, then an agent: the same.
      expect(await send(store, 'bob', operator, [{ id: 'operator-first', key: 'L' }])).toEqual([{ id: 'operator-first', seq: 3, isDuplicate: false }]);
      expect(await send(store, 'bob', alice, [{ id: 'alice-second', key: 'L' }])).toEqual([{ id: 'alice-second', seq: 4, isDuplicate: false }]);
      // Each sender's retry still finds its own message.
      expect(await send(store, 'bob', alice, [{ id: 'alice-retry', key: 'K' }])).toEqual([{ id: 'from-alice', seq: 1, isDuplicate: true }]);
      expect(await send(store, 'bob', operator, [{ id: 'operator-retry', key: 'K' }])).toEqual([{ id: 'from-operator', seq: 2, isDuplicate: true }]);
      expect(await send(store, 'bob', alice, [{ id: 'alice-retry-2', key: 'L' }])).toEqual([{ id: 'alice-second', seq: 4, isDuplicate: true }]);
      expect(await send(store, 'bob', operator, [{ id: 'operator-retry-2', key: 'L' }])).toEqual([{ id: 'operator-first', seq: 3, isDuplicate: true }]);
      // An agent whose id is `operator` (a valid id) is not the operator.
      expect(await send(store, 'bob', { kind: 'agent', agentId: 'operator' }, [{ id: 'namesake', key: 'K' }])).toEqual([
        { id: 'namesake', seq: 5, isDuplicate: false },
      ]);
      const stored = await store.listMessages('bob', ['pending'], 0, 10);
      expect(stored.map((m) => [m.seq, m.id, m.from, m.idempotencyKey])).toEqual([
        [1, 'from-alice', 'alice', 'K'],
        [2, 'from-operator', 'operator', 'K'],
        [3, 'operator-first', 'operator', 'L'],
        [4, 'alice-second', 'alice', 'L'],
        [5, 'namesake', 'operator', 'K'],
      ]);
    });

    it('still answers a key repeated within one send, and across sends, from one sender', async () => {
      const store = open();
      await store.insertAgent(agent('bob'));
      expect(await send(store, 'bob', alice, [{ id: 'm1', key: 'K' }, { id: 'm2', key: 'K' }])).toEqual([
        { id: 'm1', seq: 1, isDuplicate: false },
        { id: 'm1', seq: 1, isDuplicate: true },
      ]);
      expect(await send(store, 'bob', alice, [{ id: 'm3', key: 'K' }])).toEqual([{ id: 'm1', seq: 1, isDuplicate: true }]);
      expect((await store.listMessages('bob', ['pending'], 0, 10)).map((m) => m.id)).toEqual(['m1']);
    });

    it.each(['stopped', 'exited', 'failed'] as const)('refuses new mail for an agent that is %s, with FAILED_PRECONDITION naming its state', async (state) => {
      const store = open();
      await store.insertAgent(agent('bob'));
      expect(await send(store, 'bob', operator, [{ id: 'before', key: 'K' }])).toHaveLength(1);
      await store.updateAgent('bob', { state });
      const refused = await send(store, 'bob', operator, [{ id: 'after' }]);
      expect(refused).toBeInstanceOf(FailedPreconditionError);
      expect((refused as Error).message).toBe(`agent bob is ${state}: its outbox takes no new messages (ensure the agent again to send to it)`);
      // A retry of a send it took before it ended gets its earlier answer; one new message in it refuses it all.
      expect(await send(store, 'bob', operator, [{ id: 'retry', key: 'K' }])).toEqual([{ id: 'before', seq: 1, isDuplicate: true }]);
      expect(await send(store, 'bob', operator, [{ id: 'retry', key: 'K' }, { id: 'new' }])).toBeInstanceOf(FailedPreconditionError);
      expect((await store.listMessages('bob', ['pending'], 0, 10)).map((m) => m.id)).toEqual(['before']);
      expect((await store.getAgent('bob'))?.lastSeq).toBe(1);
    });

    it.each(['pending', 'starting', 'running', 'stalled', 'lost'] as const)('takes mail for an agent that is %s', async (state) => {
      const store = open();
      await store.insertAgent(agent('bob', { state }));
      expect(await send(store, 'bob', operator, [{ id: 'm1' }])).toHaveLength(1);
    });

    it('caps an outbox by payload bytes, pending and dead alike, and frees them as messages are acked or purged', async () => {
      const store = open();
      await store.insertAgent(agent('bob'));
      expect(await send(store, 'bob', operator, [{ id: 'm1', bytes: 400 }, { id: 'm2', bytes: 400 }])).toHaveLength(2);
      expect(outboxBytes('bob')).toEqual({ counter: 800, sum: 800 });
      const full = await send(store, 'bob', operator, [{ id: 'm3', bytes: 300 }]);
      expect(full).toBeInstanceOf(ResourceExhaustedError);
      expect((full as Error).message).toBe(
        'the outbox of bob is full (800 bytes of unacknowledged or dead-lettered payloads; these 300 more would pass the limit of 1024; ' +
          'dead letters go with `control-plane messages purge|requeue`)',
      );
      // Up to the limit exactly is taken.
      expect(await send(store, 'bob', operator, [{ id: 'm3', bytes: 224 }])).toHaveLength(1);
      expect(outboxBytes('bob')).toEqual({ counter: 1024, sum: 1024 });
      expect(await send(store, 'bob', operator, [{ id: 'm4', bytes: 1 }])).toBeInstanceOf(ResourceExhaustedError);
      // A dead letter still holds its bytes; an ack frees the taken ones.
      expect((await store.recordRefusal('bob', 1, 'no', 1))?.state).toBe('dead');
      expect(outboxBytes('bob')).toEqual({ counter: 1024, sum: 1024 });
      await store.applyOutboxBatch({ appends: [], acks: [{ agentId: 'bob', seq: 2 }] });
      expect(outboxBytes('bob')).toEqual({ counter: 624, sum: 624 });
      expect(await send(store, 'bob', operator, [{ id: 'm4', bytes: 400 }])).toHaveLength(1);
      // A requeue moves the dead letter's bytes to its new row; a purge frees them.
      const requeued = await store.requeueMessage('bob', 1);
      expect(outboxBytes('bob')).toEqual({ counter: 1024, sum: 1024 });
      expect((await store.recordRefusal('bob', requeued, 'no', 1))?.state).toBe('dead');
      await store.purgeMessage('bob', requeued);
      expect(outboxBytes('bob')).toEqual({ counter: 624, sum: 624 });
      // Messages of an ended agent pruned: its counter goes to zero with them.
      await store.updateAgent('bob', { state: 'stopped', updatedAtMs: NOW });
      await store.pruneMessages(NOW + 1, NOW + 1);
      expect(outboxBytes('bob')).toEqual({ counter: 0, sum: 0 });
    });

    it('counts each outbox on its own', async () => {
      const store = open();
      await store.insertAgent(agent('bob'));
      await store.insertAgent(agent('carol'));
      expect(await send(store, 'bob', operator, [{ id: 'm1', bytes: 1000 }])).toHaveLength(1);
      expect(await send(store, 'carol', operator, [{ id: 'm1', bytes: 1000 }])).toHaveLength(1);
      expect(outboxBytes('bob')).toEqual({ counter: 1000, sum: 1000 });
      expect(outboxBytes('carol')).toEqual({ counter: 1000, sum: 1000 });
    });
  });

  describe('signing keys', () => {
    it('inserts and lists oldest first', async () => {
      const store = open();
      await store.insertSigningKey(signingKey('k2', NOW + 1));
      await store.insertSigningKey(signingKey('k1', NOW));
      expect((await store.listSigningKeys()).map((k) => k.kid)).toEqual(['k1', 'k2']);
      expect((await store.listSigningKeys())[0]).toEqual(signingKey('k1', NOW));
    });

    it('holds one signer and one standby per purpose: a second is refused with AlreadyExistsError', async () => {
      const store = open();
      await store.insertSigningKey(signingKey('s1', NOW, 'signing'));
      await store.insertSigningKey(signingKey('b1', NOW, 'standby'));
      await expect(store.insertSigningKey(signingKey('s2', NOW, 'signing'))).rejects.toBeInstanceOf(AlreadyExistsError);
      await expect(store.insertSigningKey(signingKey('b2', NOW, 'standby'))).rejects.toBeInstanceOf(AlreadyExistsError);
      await store.insertSigningKey({ ...signingKey('other', NOW, 'signing'), purpose: 'audience' });
      expect((await store.listSigningKeys()).map((k) => [k.kid, k.state])).toEqual([
        ['b1', 'standby'],
        ['other', 'signing'],
        ['s1', 'signing'],
      ]);
    });

    it('applies a promotion all or nothing: the retired signer loses its private half; a transition from a state the key is not in changes nothing', async () => {
      const store = open();
      await store.insertSigningKey(signingKey('s1', NOW, 'signing'));
      await store.insertSigningKey(signingKey('b1', NOW + 1, 'standby'));
      const promote = [
        { kid: 's1', from: 'signing', to: 'verifying-only', atMs: NOW + 5, verifyUntilMs: NOW + 10 },
        { kid: 'b1', from: 'standby', to: 'signing', atMs: NOW + 5 },
      ] as const;
      expect(await store.transitionSigningKeys(promote)).toBe(true);
      expect(await store.listSigningKeys()).toEqual([
        { ...signingKey('s1', NOW, 'signing'), state: 'verifying-only', privateJwk: null, retiredAtMs: NOW + 5, verifyUntilMs: NOW + 10 },
        { ...signingKey('b1', NOW + 1, 'standby'), state: 'signing', signingSinceMs: NOW + 5 },
      ]);
      // The same promotion again (a second rotation that read the same keys): nothing changes.
      const before = await store.listSigningKeys();
      expect(await store.transitionSigningKeys(promote)).toBe(false);
      expect(await store.listSigningKeys()).toEqual(before);
      // A promotion that would make a second signer is refused whole, its first step rolled back.
      await store.insertSigningKey(signingKey('b2', NOW + 2, 'standby'));
      await store.insertSigningKey(signingKey('v1', NOW + 3));
      expect(await store.transitionSigningKeys([
        { kid: 'v1', from: 'verifying-only', to: 'revoked', atMs: NOW + 6, verifyUntilMs: NOW + 20 },
        { kid: 'b2', from: 'standby', to: 'signing', atMs: NOW + 6 },
      ])).toBe(false);
      expect((await store.listSigningKeys()).map((k) => [k.kid, k.state])).toEqual([
        ['s1', 'verifying-only'],
        ['b1', 'signing'],
        ['b2', 'standby'],
        ['v1', 'verifying-only'],
      ]);
    });

    it('fixes missing verify-untils and deletes retired keys whose verify-until has passed, never a signer or standby', async () => {
      const store = open();
      await store.insertSigningKey(signingKey('s1', NOW - 100, 'signing'));
      await store.insertSigningKey(signingKey('b1', NOW - 100, 'standby'));
      await store.insertSigningKey({ ...signingKey('v0', NOW - 100), verifyUntilMs: null });
      await store.insertSigningKey({ ...signingKey('v1', NOW - 100), verifyUntilMs: NOW });
      await store.insertSigningKey({ ...signingKey('r1', NOW - 100, 'verifying-only'), state: 'revoked', verifyUntilMs: NOW - 1 });
      await store.insertSigningKey({ ...signingKey('v2', NOW - 100), verifyUntilMs: NOW + 1 });
      expect(await store.fixSigningKeyVerifyUntil(NOW + 50)).toBe(1);
      expect((await store.deleteExpiredSigningKeys(NOW)).sort()).toEqual(['r1', 'v1']);
      expect((await store.listSigningKeys()).map((k) => [k.kid, k.verifyUntilMs])).toEqual([
        ['b1', null],
        ['s1', null],
        ['v0', NOW + 50],
        ['v2', NOW + 1],
      ]);
    });

    it('makes due the live agents whose credential was issued in a period, and no others', async () => {
      const store = open();
      await store.insertAgent(agent('before', { issuedAtMs: NOW - 1000, rotationDueAtMs: NOW + 500 }));
      await store.insertAgent(agent('in', { issuedAtMs: NOW, rotationDueAtMs: NOW + 500 }));
      await store.insertAgent(agent('ended', { issuedAtMs: NOW, rotationDueAtMs: NOW + 500, state: 'stopped' }));
      await store.insertAgent(agent('after', { issuedAtMs: NOW + 2000, rotationDueAtMs: NOW + 500 }));
      expect(await store.markAgentRotationsDue(NOW, NOW + 1000, NOW + 100)).toBe(1);
      expect((await store.getAgent('in'))?.rotationDueAtMs).toBe(NOW + 100);
      for (const id of ['before', 'ended', 'after']) expect((await store.getAgent(id))?.rotationDueAtMs).toBe(NOW + 500);
    });
  });

  describe('durability', () => {
    it('finds everything again after reopening the file, under the same epoch', async () => {
      const first = open();
      const epoch = await first.epoch();
      expect(epoch).toMatch(/^[0-9a-f-]{36}$/);
      await first.insertAgent(agent('a1'));
      await first.updateAgent('a1', { generation: 2 }, { generation: 1 });
      await first.insertHost(host('h1'));
      await first.leaseJoinToken('h1', 's1', NOW, () => false);
      await first.insertSigningKey(signingKey('k1', NOW));
      await first.close();

      const second = open();
      expect(await second.epoch()).toBe(epoch);
      expect(await second.getAgent('a1')).toEqual(agent('a1', { generation: 2 }));
      expect(await second.getHost('h1')).toEqual(host('h1', { joinLeaseSessionId: 's1' }));
      expect(await second.listSigningKeys()).toEqual([signingKey('k1', NOW)]);
    });

    it('gives a different file a different epoch', async () => {
      const first = open();
      const other = SqliteStore.open(join(dir, 'other.db'));
      stores.push(other);
      expect(await other.epoch()).not.toBe(await first.epoch());
    });
  });

  describe('durability and group commit', () => {
    /** Frames in the write-ahead log: each commit appends every page it changed, so this counts commits of one page. */
    function walFrames(store: SqliteStore): number {
      const [row] = store.pragma('wal_checkpoint(PASSIVE)') as { log: number }[];
      return row?.log ?? Number.NaN;
    }

    it('opens with synchronous = FULL: an answered write survives power loss, not only a process crash', () => {
      const store = open();
      expect(store.pragma('synchronous')).toEqual([{ synchronous: 2 }]);
    });

    it('commits the writes of one turn of the event loop together: one commit, not one per write', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      store.pragma('wal_checkpoint(TRUNCATE)');
      const writes = Array.from({ length: 100 }, (_, i) => store.updateAgent('a1', { detail: `status ${i}` }));
      // Queued, not written yet: even the store's own reads see none of them.
      expect((await store.getAgent('a1'))?.detail).toBe('');
      await Promise.all(writes);
      expect((await store.getAgent('a1'))?.detail).toBe('status 99');
      // The agent's row lives in one page: one commit wrote it once (plus at most a few other pages).
      expect(walFrames(store)).toBeLessThan(10);
    });

    it('commits each write alone without group commit (what the test above tells apart)', async () => {
      const store = open({ isGroupCommit: false });
      await store.insertAgent(agent('a1'));
      store.pragma('wal_checkpoint(TRUNCATE)');
      await Promise.all(Array.from({ length: 100 }, (_, i) => store.updateAgent('a1', { detail: `status ${i}` })));
      expect(walFrames(store)).toBeGreaterThanOrEqual(100);
    });

    it("rejects only the failing write of a group; the others commit", async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      const results = await Promise.allSettled([
        store.insertAgent(agent('a2')),
        store.insertAgent(agent('a1', { name: 'duplicate' })),
        store.updateAgent('a1', { detail: 'after the failure' }),
      ]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
      expect((results[1] as PromiseRejectedResult).reason).toBeInstanceOf(AlreadyExistsError);
      expect((await store.getAgent('a2'))?.agentId).toBe('a2');
      expect(await store.getAgent('a1')).toEqual(agent('a1', { detail: 'after the failure' }));
    });

    it('rejects only a failing one-statement patch of a group (run without a savepoint); the writes around it commit', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      const results = await Promise.allSettled([
        store.patchAgent('a1', { detail: 'before' }, {}),
        // NOT NULL refuses it: the statement is undone, the transaction goes on.
        store.patchAgent('a1', { detail: null as unknown as string, generation: 9 }, {}),
        store.insertAgent(agent('a2')),
        store.patchAgent('a1', { tokenId: 'after' }, { generation: 1 }),
      ]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
      expect((results[3] as PromiseFulfilledResult<boolean>).value).toBe(true);
      expect(await store.getAgent('a1')).toEqual(agent('a1', { detail: 'before', tokenId: 'after' }));
      expect((await store.getAgent('a2'))?.agentId).toBe('a2');
    });

    it('decides conditional updates of one group in the order they were made, each against the ones before', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      const [first, second] = await Promise.all([
        store.updateAgent('a1', { generation: 2, tokenId: 'first' }, { generation: 1 }),
        store.updateAgent('a1', { generation: 2, tokenId: 'second' }, { generation: 1 }),
      ]);
      expect(first?.tokenId).toBe('first');
      expect(second).toBeUndefined();
      expect((await store.getAgent('a1'))?.tokenId).toBe('first');
    });

    it('bounds one commit: what is left goes in the next turn', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      let settled = 0;
      const writes = Array.from({ length: 1_100 }, (_, i) => store.updateAgent('a1', { detail: `status ${i}` }).then(() => settled++));
      await new Promise((resolve) => setImmediate(resolve));
      expect(settled).toBe(512);
      await Promise.all(writes);
      expect(settled).toBe(1_100);
      expect((await store.getAgent('a1'))?.detail).toBe('status 1099');
    });

    it('commits queued writes on close rather than dropping them', async () => {
      const first = open();
      const pending = first.insertAgent(agent('a1'));
      await first.close();
      await pending;
      const second = open();
      expect((await second.getAgent('a1'))?.agentId).toBe('a1');
    });

    it('answers a full disk with ResourceExhaustedError, and goes on once there is room', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      // A real SQLITE_FULL: the database may not grow past the pages it has now.
      const [{ page_count: pages }] = store.pragma('page_count') as [{ page_count: number }];
      store.pragma(`max_page_count = ${pages}`);
      const big = { kind: 'module', module: 'idle', command: '', args: [], config: 'x'.repeat(64 * 1024) };
      const results = await Promise.allSettled([store.updateAgent('a1', { detail: 'fits' }), store.insertAgent(agent('a2', { spec: big }))]);
      expect(results[0]?.status).toBe('fulfilled');
      expect(results[1]?.status).toBe('rejected');
      const error = (results[1] as PromiseRejectedResult).reason as Error;
      expect(error).toBeInstanceOf(ResourceExhaustedError);
      expect(error.message).toMatch(/the store is full/);
      expect((await store.getAgent('a1'))?.detail).toBe('fits');
      expect(await store.getAgent('a2')).toBeUndefined();

      store.pragma('max_page_count = 1073741823');
      await store.insertAgent(agent('a2', { spec: big }));
      expect((await store.getAgent('a2'))?.spec.config).toHaveLength(64 * 1024);
    });
  });

  describe('close', () => {
    it('rejects every call with ClosedError afterwards, and closes idempotently', async () => {
      const store = open();
      await store.insertAgent(agent('a1'));
      await store.close();
      await store.close();
      const calls: [string, () => Promise<unknown>][] = [
        ['epoch', () => store.epoch()],
        ['getAgent', () => store.getAgent('a1')],
        ['insertAgent', () => store.insertAgent(agent('a2'))],
        ['updateAgent', () => store.updateAgent('a1', { state: 'stopped' })],
        ['listAgents', () => store.listAgents({}, null, 10)],
        ['countAgentsByHost', () => store.countAgentsByHost(['running'])],
        ['getHost', () => store.getHost('h1')],
        ['insertHost', () => store.insertHost(host('h1'))],
        ['updateHost', () => store.updateHost('h1', { capacity: 1 })],
        ['getHostLoads', () => store.getHostLoads(['h1'])],
        ['placeAgent', () => store.placeAgent('a1', { hostId: 'h1' }, {})],
        ['listHosts', () => store.listHosts(null, 10)],
        ['leaseJoinToken', () => store.leaseJoinToken('h1', 's1', NOW, () => false)],
        ['listSigningKeys', () => store.listSigningKeys()],
        ['insertSigningKey', () => store.insertSigningKey(signingKey('k1', NOW))],
        ['transitionSigningKeys', () => store.transitionSigningKeys([{ kid: 'k1', from: 'standby', to: 'signing', atMs: 1 }])],
        ['deleteExpiredSigningKeys', () => store.deleteExpiredSigningKeys(NOW)],
      ];
      for (const [name, run] of calls) {
        await expect(run(), name).rejects.toBeInstanceOf(ClosedError);
      }
    });
  });
});
