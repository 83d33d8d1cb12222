import type { AgentContext, AgentModule, DeliveredMessage } from '../../agent-host/tools/agent-module.js';

/** One `onMessage` call as the agent saw it. */
export interface ReceivedMessage {
  agentId: string;
  seq: number;
  id: string;
  from: string;
  contentType: string;
  payload: string;
  /** The agent's credential generation at the moment the message reached it. */
  generation: number;
  /** How the call ended; undefined while it runs. */
  outcome: 'taken' | 'refused' | undefined;
}

/** A gate a handler waits at until the test opens it (or the agent is stopped). */
export class Gate {
  readonly #opened: Promise<void>;
  #open!: () => void;
  #isOpen = false;

  constructor() {
    this.#opened = new Promise((resolve) => {
      this.#open = resolve;
    });
  }

  /** Lets every waiter through, now and later. */
  open(): void {
    this.#isOpen = true;
    this.#open();
  }

  /** Whether {@link open} was called. */
  get isOpen(): boolean {
    return this.#isOpen;
  }

  /** Resolves when opened or when `signal` fires, whichever is first; removes its listener either way. */
  async pass(signal: AbortSignal): Promise<void> {
    if (this.#isOpen || signal.aborted) return;
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<void>((resolve) => {
      onAbort = (): void => resolve();
      signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      await Promise.race([this.#opened, aborted]);
    } finally {
      if (onAbort !== undefined) signal.removeEventListener('abort', onAbort);
    }
  }
}

/**
 * A module agent whose behaviour a test scripts per payload, and which records
 * every message it is handed. A handler can be held at a {@link Gate}
 * (`hold`), can refuse a payload by throwing (`refuse`, a NACK), and can run
 * extra work as the agent (`onEach`, e.g. a tool call) before it returns.
 * Payloads are UTF-8 text.
 */
export class ScriptedModule {
  /** Every call, in the order the calls began (across agents). */
  readonly received: ReceivedMessage[] = [];
  readonly #gates = new Map<string, Gate>();
  readonly #refused = new Set<string>();
  /** Runs inside each handler, as the agent, after the gate and before the outcome. */
  onEach: ((context: AgentContext, message: DeliveredMessage) => Promise<void>) | undefined;

  /** The module to register on a host. */
  readonly module: AgentModule = (context) => ({
    onMessage: async (message) => {
      const record: ReceivedMessage = {
        agentId: context.agentId,
        seq: message.seq,
        id: message.id,
        from: message.from,
        contentType: message.contentType,
        payload: Buffer.from(message.payload).toString('utf8'),
        generation: context.credentials.generation,
        outcome: undefined,
      };
      this.received.push(record);
      try {
        await this.#gates.get(key(context.agentId, record.payload))?.pass(context.signal);
        await this.onEach?.(context, message);
        if (this.#refused.has(key(context.agentId, record.payload))) throw new Error(`refusing ${record.payload}`);
        record.outcome = 'taken';
      } catch (err) {
        record.outcome = 'refused';
        throw err;
      }
    },
  });

  /** Holds `agentId`'s handler at a gate when it is handed `payload`; returns the gate. */
  hold(agentId: string, payload: string): Gate {
    const gate = new Gate();
    this.#gates.set(key(agentId, payload), gate);
    return gate;
  }

  /** Opens every gate (so nothing is left waiting at teardown). */
  openAll(): void {
    for (const gate of this.#gates.values()) gate.open();
  }

  /** Makes `agentId` refuse `payload` (its handler throws) until {@link accept}. */
  refuse(agentId: string, payload: string): void {
    this.#refused.add(key(agentId, payload));
  }

  /** Makes `agentId` take `payload` again. */
  accept(agentId: string, payload: string): void {
    this.#refused.delete(key(agentId, payload));
  }

  /** Calls handed to `agentId`, in order (refused ones included). */
  of(agentId: string): ReceivedMessage[] {
    return this.received.filter((r) => r.agentId === agentId);
  }

  /** Payloads `agentId` took, in the order it took them. */
  taken(agentId: string): string[] {
    return this.of(agentId)
      .filter((r) => r.outcome === 'taken')
      .map((r) => r.payload);
  }
}

function key(agentId: string, payload: string): string {
  return `${agentId}\u0000${payload}`;
}
