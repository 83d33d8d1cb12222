import type { Clock } from '../common/clock.js';
import type { AgentClient } from './tools/agent-client.js';

/** Options of {@link runHeartbeats}. */
export interface HeartbeatOptions {
  agentId: string;
  client: AgentClient;
  clock: Clock;
  /** Read at each beat, so a new interval from the control plane applies at once. */
  intervalMs: () => number;
  signal: AbortSignal;
  onBeat: (result: { isOk: boolean; error?: Error }) => void;
}

/**
 * Calls `AgentService.Heartbeat` every interval until `signal` aborts. The
 * client reads the agent's token at the moment of each call; the loop holds none.
 */
export async function runHeartbeats(options: HeartbeatOptions): Promise<void> {
  const { agentId, client, clock, signal, onBeat } = options;
  while (!signal.aborted) {
    await clock.sleep(options.intervalMs(), signal);
    if (signal.aborted) return;
    try {
      await client.heartbeat(agentId, { signal });
      onBeat({ isOk: true });
    } catch (err) {
      if (signal.aborted) return;
      onBeat({ isOk: false, error: err instanceof Error ? err : new Error(String(err)) });
    }
  }
}
