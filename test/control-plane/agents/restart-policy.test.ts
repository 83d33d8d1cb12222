/**
 * What follows an agent's end, as a table: which policies restart which ends,
 * the delay doubling to its cap, the budget ending a crash loop, and a
 * healthy period forgiving the ends before it.
 */
import { describe, expect, it } from 'vitest';
import { decideRestart, parseRestartPolicy, type AgentEnd, type RestartBudget, type RestartDecision } from '../../../control-plane/agents/restart-policy.js';

const NOW = 1_800_000_000_000;
const budget: RestartBudget = { initialDelayMs: 1_000, maxDelayMs: 10_000, maxFailures: 7, healthyAfterMs: 60_000 };

function end(patch: Partial<AgentEnd> = {}): AgentEnd {
  return { policy: 'on-failure', state: 'failed', failures: 0, runningSinceMs: 0, nowMs: NOW, ...patch };
}

describe('decideRestart', () => {
  const rows: { name: string; end: AgentEnd; decision: RestartDecision }[] = [
    { name: 'never: a failure stays failed', end: end({ policy: 'never' }), decision: { action: 'end', failures: 1 } },
    { name: 'never: an exit stays exited', end: end({ policy: 'never', state: 'exited' }), decision: { action: 'end', failures: 1 } },
    { name: 'on-failure: an exit stays exited', end: end({ state: 'exited' }), decision: { action: 'end', failures: 1 } },
    { name: 'on-failure: a first failure waits the initial delay', end: end(), decision: { action: 'restart', failures: 1, delayMs: 1_000, restartAtMs: NOW + 1_000 } },
    { name: 'always: an exit is restarted too', end: end({ policy: 'always', state: 'exited' }), decision: { action: 'restart', failures: 1, delayMs: 1_000, restartAtMs: NOW + 1_000 } },
    { name: 'the delay doubles per end in a row', end: end({ failures: 2 }), decision: { action: 'restart', failures: 3, delayMs: 4_000, restartAtMs: NOW + 4_000 } },
    { name: 'the delay stops at its cap', end: end({ failures: 5 }), decision: { action: 'restart', failures: 6, delayMs: 10_000, restartAtMs: NOW + 10_000 } },
    { name: 'the budget spent: a crash loop', end: end({ failures: 6 }), decision: { action: 'give-up', failures: 7 } },
    { name: 'past the budget (a smaller one since): still a crash loop', end: end({ failures: 40 }), decision: { action: 'give-up', failures: 41 } },
    {
      name: 'ran healthy for the period: earlier ends forgiven',
      end: end({ failures: 6, runningSinceMs: NOW - 60_000 }),
      decision: { action: 'restart', failures: 1, delayMs: 1_000, restartAtMs: NOW + 1_000 },
    },
    {
      name: 'ran, but a moment short of the period: they count',
      end: end({ failures: 2, runningSinceMs: NOW - 59_999 }),
      decision: { action: 'restart', failures: 3, delayMs: 4_000, restartAtMs: NOW + 4_000 },
    },
  ];

  it.each(rows)('$name', ({ end: ended, decision }) => {
    expect(decideRestart(ended, budget)).toEqual(decision);
  });

  it('never overflows the delay, however many ends', () => {
    expect(decideRestart(end({ failures: 5_000 }), { ...budget, maxFailures: 10_000 })).toMatchObject({ action: 'restart', delayMs: 10_000 });
  });

  it('parses the three policies and nothing else', () => {
    expect(['never', 'on-failure', 'always', 'sometimes', ''].map(parseRestartPolicy)).toEqual(['never', 'on-failure', 'always', undefined, undefined]);
  });
});
