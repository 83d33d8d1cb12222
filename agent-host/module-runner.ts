import type { AgentEnd, AgentRunner, AgentRunnerContext, AgentRunnerFactory } from './agent-runner.js';
import type { AgentContext, AgentInstance, AgentModule, DeliveredMessage } from './tools/agent-module.js';

/**
 * Runs a module agent in-process: calls `module` once with its frozen context,
 * then hands it each message. `close()` waits for the message in hand (the
 * module sees its signal aborted), then closes the instance.
 */
export function moduleRunner(module: AgentModule): AgentRunnerFactory {
  return async (context) => new ModuleRunner(context, await module(moduleContext(context)));
}

function moduleContext(context: AgentRunnerContext): AgentContext {
  return Object.freeze({
    agentId: context.start.agentId,
    name: context.start.name,
    config: context.start.spec?.config ?? '',
    credentials: context.credentials,
    agent: context.client,
    clock: context.clock,
    logger: context.logger,
    signal: context.signal,
  });
}

/** A module instance behind the {@link AgentRunner} interface. */
class ModuleRunner implements AgentRunner {
  // A module has no life of its own apart from its host: it never ends by itself.
  readonly ended = new Promise<AgentEnd>(() => undefined);
  readonly #context: AgentRunnerContext;
  #instance: AgentInstance | undefined;
  #handling: Promise<unknown> = Promise.resolve();
  #closing: Promise<void> | undefined;

  constructor(context: AgentRunnerContext, instance: AgentInstance) {
    this.#context = context;
    this.#instance = instance;
  }

  handle(message: DeliveredMessage): Promise<void> {
    const handling = Promise.resolve(this.#instance?.onMessage?.(message));
    this.#handling = handling.catch(() => undefined);
    return handling;
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#handling;
    try {
      await this.#instance?.close?.();
    } catch (err) {
      this.#context.logger.warn({ err }, 'agent module failed to close');
    }
    this.#instance = undefined;
  }
}
