/**
 * What placing an agent costs the store does not grow with the number of
 * agents it holds: a host's load is a column the store keeps, not a count over
 * every agent. The same backlog of pending agents is placed on a host that
 * connects, once beside 1,000 agents and once beside 100,000 (live on other
 * hosts, so any count of live agents would read them all), through a counting
 * Store of our own around the real one; calls and the rows they answered with
 * must come out the same.
 */
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { databasePath } from '../../control-plane/store/sqlite-store.js';
import type { Store } from '../../control-plane/store/store.js';
import { countingStore, StoreCalls } from '../support/counting-store.js';
import { call, Harness, idleModule } from '../support/harness.js';
import { NOW } from '../support/store-records.js';
import { isPostgresTestRun } from '../support/test-store.js';
import { waitUntil } from '../support/wait.js';

const PENDING = 20;

/** Adds `count` agents running on hosts other than the test's, in one transaction, straight into the file. */
function addBackground(dir: string, count: number): void {
  const db = new Database(databasePath(dir));
  try {
    const insert = db.prepare(
      `INSERT INTO agents (agent_id, name, state, host_id, host_labels, spec, incarnation, generation, token_id,
         issued_at_ms, expires_at_ms, rotation_due_at_ms, created_at_ms, updated_at_ms, detail, last_seq, acked_seq)
       VALUES (?, ?, 'running', ?, '[]', '{"kind":"module","module":"idle","command":"","args":[],"config":""}', 1, 1, NULL,
         ?, ?, ?, ?, ?, '', 0, 0)`,
    );
    db.transaction(() => {
      for (let i = 0; i < count; i++) {
        const agentId = `bg-${String(i).padStart(6, '0')}`;
        insert.run(agentId, agentId, `elsewhere-${i % 100}`, NOW, NOW + 3_600_000, NOW + 1_800_000, NOW, NOW);
      }
    })();
  } finally {
    db.close();
  }
}

// It writes 100,000 rows straight into the SQLite file; a PostgreSQL run (TETHER_TEST_STORE=postgres) skips it.
describe.skipIf(isPostgresTestRun())('placement cost', () => {
  const harnesses: Harness[] = [];

  afterEach(async () => {
    for (const h of harnesses.splice(0)) await h.close();
  });

  /** Places PENDING agents on a host that connects, beside `background` others; returns the store calls it took. */
  async function placeBeside(background: number): Promise<{ calls: Record<string, number>; rows: number }> {
    const calls = new StoreCalls();
    const h = await Harness.start({ wrapStore: (store) => countingStore(store, calls) });
    harnesses.push(h);
    addBackground(h.dir, background);
    expect((await h.store.countAgentsByState()).get('running')).toBe(background);
    for (let i = 0; i < PENDING; i++) {
      await call(h.admin.dispatchAgent.bind(h.admin), {
        agentId: `waiting-${i}`,
        name: '',
        hostId: '',
        hostLabels: [],
        spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
      });
    }
    calls.reset();
    // Its Hello places the whole backlog; each agent is started, reported started, and its (empty) outbox read.
    const { hostId } = await h.startHost('placer');
    await waitUntil(async () => {
      const running = await h.store.listAgents({ hostId, states: ['running'] }, null, PENDING + 1);
      return running.items.length === PENDING && calls.count('listDeliverable') >= PENDING;
    }, 'the backlog placed and running');
    return { calls: calls.snapshot(), rows: calls.rows };
  }

  it('makes the same store calls, reading the same rows, per placed agent beside 1,000 agents as beside 100,000', async () => {
    const small = await placeBeside(1_000);
    const large = await placeBeside(100_000);
    // Lifecycle events are written in batches, one write per turn that recorded any: how many writes depends on
    // how the turns fell, not on the agents around, so they are held to a bound of their own.
    const { appendEvents: smallEventWrites = 0, ...smallCalls } = small.calls;
    const { appendEvents: largeEventWrites = 0, ...largeCalls } = large.calls;
    const perAgent = (n: number): number => n / PENDING;
    const totalOf = (calls: Record<string, number>): number => Object.values(calls).reduce((a, b) => a + b, 0);
    expect({ perAgent: perAgent(totalOf(largeCalls)), calls: largeCalls }).toEqual({ perAgent: perAgent(totalOf(smallCalls)), calls: smallCalls });
    // At most one write per event recorded (each agent placed and started, the host connected), whatever is around.
    for (const writes of [smallEventWrites, largeEventWrites]) {
      expect(writes).toBeGreaterThan(0);
      expect(writes).toBeLessThanOrEqual(2 * PENDING + 1);
    }
    expect(perAgent(large.rows), 'rows read per placed agent').toBe(perAgent(small.rows));
    // Nothing that reads every agent is on the path.
    expect(large.calls.countAgentsByHost ?? 0).toBe(0);
    expect(large.calls.countAgentsByState ?? 0).toBe(0);
  });

  it('gives the event loop a turn between placements, even when none needs a signature or any I/O', async () => {
    // Every pending agent is looked at and none fits (the one host that runs them is full), so without a
    // yield the whole backlog would be gone through in microtasks (the SQLite store answers synchronously)
    // with nothing else (keepalives, other streams) served meanwhile.
    const BACKLOG = 50;
    let sweep: { lookedAt: number; atFirstTurn: number | undefined } | undefined;
    const observing = (store: Store): Store =>
      new Proxy(store, {
        get(target, property, receiver) {
          const value: unknown = Reflect.get(target, property, receiver);
          if (typeof value !== 'function') return value;
          return (...args: unknown[]): unknown => {
            if (property === 'listAgents' && sweep === undefined && (args[0] as { states?: string[] }).states?.join() === 'pending' && armed) {
              const started = { lookedAt: 0, atFirstTurn: undefined as number | undefined };
              sweep = started;
              setImmediate(() => (started.atFirstTurn = started.lookedAt));
            }
            if (property === 'getAgent' && sweep !== undefined) sweep.lookedAt++;
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      });
    let armed = false;
    const h = await Harness.start({ wrapStore: observing });
    harnesses.push(h);
    const spec = { kind: 'module', module: 'idle', command: '', args: [], config: '' };
    await h.startHost('full', { capacity: 1 });
    for (let i = 0; i < BACKLOG + 1; i++) {
      await call(h.admin.dispatchAgent.bind(h.admin), { agentId: `wait-${String(i).padStart(3, '0')}`, name: '', hostId: '', hostLabels: [], spec });
    }
    expect((await h.store.listAgents({ states: ['pending'] }, null, 100)).items).toHaveLength(BACKLOG);
    // A host that cannot run them connects: its Hello goes through the backlog.
    armed = true;
    await h.startHost('other', { modules: new Map([['other', idleModule]]) });
    await waitUntil(() => (sweep?.lookedAt ?? 0) >= BACKLOG && sweep?.atFirstTurn !== undefined, 'the backlog looked at');
    expect(sweep?.atFirstTurn, 'agents looked at before the event loop had a turn').toBeLessThan(BACKLOG);
    expect((await h.store.listAgents({ states: ['pending'] }, null, 100)).items).toHaveLength(BACKLOG);
  });
});
