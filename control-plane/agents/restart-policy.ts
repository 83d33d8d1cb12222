/**
 * What happens to an agent that ended by itself: a pure function of its
 * policy, how it ended, its failure count and how long it was healthy, so a
 * crash loop is decided the same way on every control plane and table-tested.
 */
import type { RestartPolicyName } from '../store/store.js';

/** Every restart policy, as typed on the wire and in the CLI. */
export const RESTART_POLICIES: readonly RestartPolicyName[] = ['never', 'on-failure', 'always'];

/** Backoff and budget of restarts. */
export interface RestartBudget {
  /** Delay before the first restart; doubled at every further failure in a row. */
  initialDelayMs: number;
  /** The delay never grows past this. */
  maxDelayMs: number;
  /** Ends in a row (without a healthy period between them) after which the agent is left `failed`. */
  maxFailures: number;
  /** Running this long without ending resets the count of failures in a row. */
  healthyAfterMs: number;
}

/** 1 s doubling to 5 min; 5 ends in a row make a crash loop; 10 min running forgives them. */
export const DEFAULT_RESTART_BUDGET: RestartBudget = {
  initialDelayMs: 1_000,
  maxDelayMs: 5 * 60_000,
  maxFailures: 5,
  healthyAfterMs: 10 * 60_000,
};

/** An agent's end, as {@link decideRestart} needs it. */
export interface AgentEnd {
  policy: RestartPolicyName;
  /** How it ended (an operator stop never reaches here: it is never restarted). */
  state: 'exited' | 'failed';
  /** Ends in a row counted so far (before this one). */
  failures: number;
  /** When it last became `running` (0: it never did in this placement). */
  runningSinceMs: number;
  nowMs: number;
}

/** What to do after an end. */
export type RestartDecision =
  /** Its policy does not restart this kind of end: it stays ended. */
  | { action: 'end'; failures: number }
  /** Its budget is spent: it ends `failed`, a crash loop. */
  | { action: 'give-up'; failures: number }
  /** Start it again at `restartAtMs`. */
  | { action: 'restart'; failures: number; delayMs: number; restartAtMs: number };

/** Parses a restart policy name; undefined when it is none of {@link RESTART_POLICIES}. */
export function parseRestartPolicy(name: string): RestartPolicyName | undefined {
  return RESTART_POLICIES.find((p) => p === name);
}

/**
 * Decides what follows `end`. `on-failure` restarts after `failed`, `always`
 * after `exited` too; either counts the end against the budget (an agent
 * that keeps exiting at once loops as surely as one that keeps failing),
 * unless it had been running for `healthyAfterMs`, which forgives the ends
 * before. The delay doubles per end in a row, capped.
 */
export function decideRestart(end: AgentEnd, budget: RestartBudget = DEFAULT_RESTART_BUDGET): RestartDecision {
  const wasHealthy = end.runningSinceMs > 0 && end.nowMs - end.runningSinceMs >= budget.healthyAfterMs;
  const failures = (wasHealthy ? 0 : end.failures) + 1;
  const isRestarted = end.policy === 'always' || (end.policy === 'on-failure' && end.state === 'failed');
  if (!isRestarted) return { action: 'end', failures };
  if (failures >= budget.maxFailures) return { action: 'give-up', failures };
  // 2 ** 40 is far past any cap: the exponent is bounded so the arithmetic stays exact.
  const delayMs = Math.min(budget.maxDelayMs, budget.initialDelayMs * 2 ** Math.min(failures - 1, 40));
  return { action: 'restart', failures, delayMs, restartAtMs: end.nowMs + delayMs };
}
