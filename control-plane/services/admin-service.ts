import type { Logger } from '../../common/logger.js';
import type { AdminServiceServer } from '../../gen/tether/v1/admin.js';
import type { AgentManager } from '../agents/agent-manager.js';
import type { Authenticator } from '../auth/authenticator.js';
import { unary } from '../grpc/status.js';
import type { HostService } from '../hosts/host-service.js';
import type { Store } from '../store/store.js';
import type { SigningKeyRing } from '../tokens/signing-keys.js';
import type { Clock } from '../../common/clock.js';
import type { HeartbeatLedger } from './heartbeat-ledger.js';
import { decodePageToken, encodePageToken, labelsFromProto, pageSize, specFromProto, toAgentInfo } from './convert.js';

/** What AdminService needs. */
export interface AdminServiceDeps {
  authenticator: Authenticator;
  agents: AgentManager;
  hosts: HostService;
  store: Store;
  keys: SigningKeyRing;
  clock: Clock;
  heartbeats: HeartbeatLedger;
  logger: Logger;
}

/** The operator API; every call first proves the admin token. */
export function adminService(deps: AdminServiceDeps): AdminServiceServer {
  const { authenticator, agents, hosts, store, keys, clock, heartbeats } = deps;
  const logger = deps.logger.child({ component: 'admin' });
  return {
    enrollHost: unary(logger, async (request, call) => {
      authenticator.admin(call.metadata);
      const { host, joinToken } = await hosts.enroll(request.name, request.joinTtlMs);
      return { hostId: host.hostId, joinToken, joinExpiresAtMs: host.joinExpiresAtMs };
    }),
    listHosts: unary(logger, async (request, call) => {
      authenticator.admin(call.metadata);
      const page = await hosts.listHosts(decodePageToken(request.pageToken), pageSize(request.pageSize));
      return {
        hosts: page.hosts.map((host) => ({
          hostId: host.hostId,
          name: host.name,
          state: host.state,
          connected: host.isConnected,
          capacity: host.capacity,
          agents: host.agents,
          labels: host.labels,
          lastSeenMs: host.lastSeenMs,
          credentialGeneration: host.credentialGeneration,
          credentialExpiresAtMs: host.credentialExpiresAtMs,
          clockSkewMs: host.clockSkewMs,
        })),
        nextPageToken: encodePageToken(page.nextAfterId),
      };
    }),
    dispatchAgent: unary(logger, async (request, call) => {
      authenticator.admin(call.metadata);
      const agent = await agents.dispatch({
        agentId: request.agentId,
        name: request.name,
        spec: specFromProto(request.spec),
        hostId: request.hostId,
        hostLabels: labelsFromProto(request.hostLabels),
      });
      return { agent: toAgentInfo(agent) };
    }),
    ensureAgent: unary(logger, async (request, call) => {
      authenticator.admin(call.metadata);
      const { agent, isCreated } = await agents.ensure({
        agentId: request.agentId,
        name: request.name,
        spec: specFromProto(request.spec),
        hostId: request.hostId,
        hostLabels: labelsFromProto(request.hostLabels),
      });
      return { agent: toAgentInfo(agent, heartbeats.last(agent.agentId)), created: isCreated };
    }),
    stopAgent: unary(logger, async (request, call) => {
      authenticator.admin(call.metadata);
      const agent = await agents.stop(request.agentId, request.reason);
      heartbeats.forget(agent.agentId);
      return { agent: toAgentInfo(agent) };
    }),
    rotateAgentCredential: unary(logger, async (request, call) => {
      authenticator.admin(call.metadata);
      const agent = await agents.rotate(request.agentId, 'forced');
      return { generation: agent?.generation ?? 0, expiresAtMs: agent?.expiresAtMs ?? 0 };
    }),
    listAgents: unary(logger, async (request, call) => {
      authenticator.admin(call.metadata);
      const page = await store.listAgents(
        request.hostId === '' ? {} : { hostId: request.hostId },
        decodePageToken(request.pageToken),
        pageSize(request.pageSize),
      );
      return {
        agents: page.items.map((agent) => toAgentInfo(agent, heartbeats.last(agent.agentId))),
        nextPageToken: encodePageToken(page.nextAfterId),
      };
    }),
    getAgent: unary(logger, async (request, call) => {
      authenticator.admin(call.metadata);
      const agent = await agents.get(request.agentId);
      return { agent: toAgentInfo(agent, heartbeats.last(agent.agentId)) };
    }),
    getJwks: unary(logger, (_request, call) => {
      authenticator.admin(call.metadata);
      return Promise.resolve({ jwksJson: JSON.stringify(keys.jwks(clock.now())) });
    }),
  };
}
