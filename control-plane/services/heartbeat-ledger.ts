/** The last heartbeat time of each agent, kept in memory (a restart forgets it, which is harmless). */
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

  /** Forgets a stopped agent. */
  forget(agentId: string): void {
    this.#lastMs.delete(agentId);
  }
}
