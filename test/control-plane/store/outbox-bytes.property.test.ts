/**
 * The byte and message counters of each outbox (`agents.outbox_bytes` and
 * `outbox_count`, kept by the store on every write to its messages) as a
 * property over generated sequences of appends, acks, dead-letterings,
 * requeues, purges, ends and prunes: after every step they equal the payload
 * bytes and the number of the agent's pending and dead messages counted afresh,
 * and an append is refused exactly when it would take the outbox past its byte
 * cap or its count cap.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ResourceExhaustedError } from '../../../common/errors.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { agent, NOW } from '../../support/store-records.js';

const AGENTS = ['a', 'b'] as const;
const MAX_PENDING_BYTES = 1_000;
/** Low enough that generated runs meet the count cap too (sizes of 0 add messages but no bytes). */
const MAX_PENDING_MESSAGES = 10;

type Step =
  | { kind: 'append'; agent: number; sizes: number[] }
  | { kind: 'ack'; agent: number; behind: number }
  | { kind: 'dead-letter'; agent: number; pick: number }
  | { kind: 'requeue'; agent: number; pick: number }
  | { kind: 'purge'; agent: number; pick: number }
  | { kind: 'end-and-prune'; agent: number };

const agentIndex = fc.integer({ min: 0, max: AGENTS.length - 1 });
const pick = fc.nat({ max: 20 });
const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('append' as const), agent: agentIndex, sizes: fc.array(fc.nat({ max: 400 }), { minLength: 1, maxLength: 4 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('ack' as const), agent: agentIndex, behind: fc.nat({ max: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('dead-letter' as const), agent: agentIndex, pick }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('requeue' as const), agent: agentIndex, pick }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('purge' as const), agent: agentIndex, pick }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('end-and-prune' as const), agent: agentIndex }) },
);

/** Each agent's counter and what its outbox's rows add up to, read on a connection of their own. */
function readBytes(path: string): { agentId: string; counter: number; sum: number; countCounter: number; count: number }[] {
  const db = new Database(path, { readonly: true });
  try {
    return db
      .prepare(
        `SELECT agent_id AS agentId, outbox_bytes AS counter,
           (SELECT COALESCE(SUM(length(payload)), 0) FROM messages m WHERE m.agent_id = agents.agent_id AND m.state IN ('pending', 'dead')) AS sum,
           outbox_count AS countCounter,
           (SELECT COUNT(*) FROM messages m WHERE m.agent_id = agents.agent_id AND m.state IN ('pending', 'dead')) AS count
         FROM agents ORDER BY agent_id`,
      )
      .all() as { agentId: string; counter: number; sum: number; countCounter: number; count: number }[];
  } finally {
    db.close();
  }
}

async function runSteps(steps: readonly Step[]): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'tether-outbox-bytes-'));
  const path = join(dir, 'tether.db');
  const store = SqliteStore.open(path);
  try {
    for (const agentId of AGENTS) await store.insertAgent(agent(agentId));
    let nextId = 0;
    for (const s of steps) {
      const agentId = AGENTS[s.agent] as string;
      const beforeRow = readBytes(path).find((row) => row.agentId === agentId);
      const before = beforeRow?.sum ?? 0;
      const beforeCount = beforeRow?.count ?? 0;
      switch (s.kind) {
        case 'append': {
          const [result] = await store.applyOutboxBatch({
            appends: [
              {
                agentId,
                sender: { kind: 'operator' },
                maxPending: MAX_PENDING_MESSAGES,
                maxPendingBytes: MAX_PENDING_BYTES,
                messages: s.sizes.map((size) => ({
                  id: `m${nextId++}`,
                  contentType: 'application/octet-stream',
                  payload: Buffer.alloc(size, 1),
                  createdAtMs: NOW,
                  idempotencyKey: null,
                })),
              },
            ],
            acks: [],
          });
          const added = s.sizes.reduce((total, size) => total + size, 0);
          if (before + added > MAX_PENDING_BYTES || beforeCount + s.sizes.length > MAX_PENDING_MESSAGES) expect(result).toBeInstanceOf(ResourceExhaustedError);
          else expect(result).toHaveLength(s.sizes.length);
          break;
        }
        case 'ack': {
          const record = await store.getAgent(agentId);
          await store.applyOutboxBatch({ appends: [], acks: [{ agentId, seq: Math.max(0, (record?.lastSeq ?? 0) - s.behind) }] });
          break;
        }
        case 'dead-letter': {
          const pending = await store.listMessages(agentId, ['pending'], 0, 100);
          const chosen = pending[s.pick % Math.max(1, pending.length)];
          if (chosen !== undefined) await store.recordRefusal(agentId, chosen.seq, 'refused', 1);
          break;
        }
        case 'requeue':
        case 'purge': {
          const dead = await store.listMessages(agentId, ['dead'], 0, 100);
          const chosen = dead[s.pick % Math.max(1, dead.length)];
          if (chosen === undefined) break;
          if (s.kind === 'requeue') await store.requeueMessage(agentId, chosen.seq);
          else await store.purgeMessage(agentId, chosen.seq);
          break;
        }
        case 'end-and-prune': {
          // Ended, its mail pruned, then ensured again: it takes mail once more, from an empty outbox.
          await store.updateAgent(agentId, { state: 'stopped', updatedAtMs: NOW });
          await store.pruneMessages(NOW, NOW + 1);
          await store.updateAgent(agentId, { state: 'running', updatedAtMs: NOW + 2 });
          break;
        }
      }
      for (const row of readBytes(path)) {
        expect(row.counter, `${row.agentId} after ${JSON.stringify(s)}`).toBe(row.sum);
        // Its message counter (migration 8), kept by the same triggers.
        expect(row.countCounter, `${row.agentId}'s count after ${JSON.stringify(s)}`).toBe(row.count);
      }
    }
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('outbox byte counter', () => {
  it('equals the payload bytes of pending and dead messages after any sequence of outbox writes, and caps appends by it', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 30 }), (steps) => runSteps(steps)),
      { numRuns: 40 },
    );
  });
});
