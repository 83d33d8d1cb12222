import type { AgentModule } from '../tools/agent-module.js';

/**
 * The demo agent `npm start` runs: it says who the control plane thinks it is
 * (through its own token, read at the moment of the call) and logs each message.
 */
export const demoModule: AgentModule = async (context) => {
  const me = await context.agent.whoAmI({ signal: context.signal });
  // The logger already names the agent; what the control plane answered goes under its own key.
  context.logger.info({ knownAs: me.agentId, hostId: me.hostId, gen: me.generation, jti: me.tokenId, kid: me.keyId }, 'demo agent started; the control plane knows me');
  return {
    onMessage: (message) => {
      context.logger.info({ seq: message.seq, from: message.from, bytes: message.payload.length }, 'demo agent got a message');
      return Promise.resolve();
    },
  };
};

/** An agent that only heartbeats. */
export const idleModule: AgentModule = () => ({});

/** The modules every host registers: `demo` and `idle`. */
export function builtinModules(): Map<string, AgentModule> {
  return new Map([
    ['demo', demoModule],
    ['idle', idleModule],
  ]);
}
