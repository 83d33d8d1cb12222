import type { Clock } from '../../common/clock.js';
import { PermissionDeniedError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { AgentServiceServer } from '../../gen/tether/v1/agent.js';
import type { AgentManager } from '../agents/agent-manager.js';
import type { Authenticator } from '../auth/authenticator.js';
import type { ControlPlaneEvents } from '../events.js';
import { unary } from '../grpc/status.js';
import type { TokenClaims } from '../tokens/token-kinds.js';
import { stateToProto } from './convert.js';
import type { HeartbeatLedger } from './heartbeat-ledger.js';

/** What AgentService needs. */
export interface AgentServiceDeps {
  authenticator: Authenticator;
  agents: AgentManager;
  clock: Clock;
  events: ControlPlaneEvents;
  heartbeats: HeartbeatLedger;
  logger: Logger;
}

/** An agent may act only as itself: the id it names must be its token's subject. */
function requireSelf(claims: TokenClaims, agentId: string): void {
  if (agentId !== claims.subject) throw new PermissionDeniedError('an agent may act only as itself');
}

/** The API agents (and their tools) call with their own agent token. */
export function agentService(deps: AgentServiceDeps): AgentServiceServer {
  const { authenticator, agents, clock, events, heartbeats } = deps;
  const logger = deps.logger.child({ component: 'agent-api' });
  return {
    heartbeat: unary(logger, async (request, call) => {
      const claims = await authenticator.agent(call.metadata);
      requireSelf(claims, request.agentId);
      const nowMs = clock.now();
      heartbeats.record(claims.subject, nowMs);
      const agent = await agents.get(claims.subject);
      events.emit('heartbeat', { agentId: request.agentId, subject: claims.subject, generation: claims.generation, tokenId: claims.tokenId });
      return { serverTimeMs: nowMs, state: stateToProto(agent.state) };
    }),
    whoAmI: unary(logger, async (_request, call) => {
      const claims = await authenticator.agent(call.metadata);
      return {
        agentId: claims.subject,
        hostId: claims.hostId,
        generation: claims.generation,
        incarnation: claims.incarnation,
        expiresAtMs: claims.expiresAtMs,
        keyId: claims.keyId,
        tokenId: claims.tokenId,
      };
    }),
  };
}
