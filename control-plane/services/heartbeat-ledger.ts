/**
 * The last heartbeat time of each live agent, kept in memory (a restart
 * forgets it, which is harmless). The agent manager forgets an agent whenever
 * it ends (stopped, exited, failed) or moves to a new incarnation, so the
 * ledger holds at most one entry per live agent however long the control plane runs.
 */
export class HeartbeatLedger {
  readonly #lastMs = new Map<string, number>();

  /** Records a heartbeat of `agentId` at `nowMs`. */
  record(agentId: string, nowMs: number): void {
    this.#lastMs.set(agentId, nowMs);
  }

  /** The last heartbeat of `agentId`, 0 if none. */
  last(agentId: string): number {
    return this.#lastMs.get(agentId) ?? 0;
  }

  /** Forgets an agent that ended or moved (its next incarnation starts with no heartbeat). */
  forget(agentId: string): void {
    this.#lastMs.delete(agentId);
  }

  /** How many agents the ledger holds. */
  get size(): number {
    return this.#lastMs.size;
  }
}
