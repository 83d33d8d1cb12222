/**
 * The half-life rule on delivery, as a property over generated timelines on a
 * real control plane and host (fake clock shared by both): whenever a message
 * reaches an agent, the token in its holder has more than half its life left.
 * Scheduled rotation is off, so the rule itself is all that keeps tokens fresh:
 * time jumps by anything from nothing to past a whole TTL between sends.
 */
import { EventEmitter } from 'node:events';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { call, Harness } from '../support/harness.js';
import { nextEvent } from '../support/wait.js';

const TTL_MS = 60_000;

/** What an agent saw as it took a message. */
interface Receipt {
  agentId: string;
  seq: number;
  nowMs: number;
  expiresAtMs: number;
  generation: number;
}

describe('the half-life rule on delivery, over generated timelines', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('hands every message to an agent holding a token with more than half its life left', async () => {
    harness = await Harness.start({ agentTokenTtlMs: TTL_MS, isRotationEnabled: false });
    const h = harness;
    const receipts = new EventEmitter<{ receipt: [Receipt] }>();
    const watcher: AgentModule = (context) => ({
      onMessage: (message) => {
        receipts.emit('receipt', {
          agentId: context.agentId,
          seq: message.seq,
          nowMs: context.clock.now(),
          expiresAtMs: context.credentials.expiresAtMs,
          generation: context.credentials.generation,
        });
        return Promise.resolve();
      },
    });
    const { host, hostId } = await h.startHost('half-life', { modules: new Map([['watcher', watcher]]) });

    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        // Each step: move the clock (0 to 1.2 TTL), then send a batch of 1 to 3 messages.
        fc.array(fc.record({ advanceMs: fc.integer({ min: 0, max: (TTL_MS * 6) / 5 }), count: fc.integer({ min: 1, max: 3 }) }), { minLength: 1, maxLength: 12 }),
        async (steps) => {
          const agentId = `half-life-${run++}`;
          await h.dispatch(host, hostId, agentId, 'watcher');
          let seq = 0;
          for (const step of steps) {
            h.clock.advance(step.advanceMs);
            const last = seq + step.count;
            const seen: Receipt[] = [];
            const onReceipt = (r: Receipt): void => void (r.agentId === agentId && seen.push(r));
            receipts.on('receipt', onReceipt);
            try {
              const allTaken = nextEvent<Receipt>(receipts, 'receipt', (r) => r.agentId === agentId && r.seq === last);
              await call(h.admin.sendMessages.bind(h.admin), {
                agentId,
                messages: Array.from({ length: step.count }, (_, i) => ({ contentType: 'text/plain', payload: Buffer.from(`m${seq + i + 1}`), idempotencyKey: '' })),
              });
              await allTaken;
            } finally {
              receipts.off('receipt', onReceipt);
            }
            expect(seen.map((r) => r.seq)).toEqual(Array.from({ length: step.count }, (_, i) => seq + i + 1));
            for (const r of seen) {
              // In integers: more than TTL/2 left at the moment the agent has the message.
              expect(2 * (r.expiresAtMs - r.nowMs), `seq ${r.seq} of ${agentId} (gen ${r.generation})`).toBeGreaterThan(TTL_MS);
            }
            seq = last;
          }
          await call(h.admin.stopAgent.bind(h.admin), { agentId, reason: 'run over' });
        },
      ),
      { numRuns: 15 },
    );
  });
});
