import { status as grpcStatus } from '@grpc/grpc-js';
import type { Logger } from '../../common/logger.js';
import { AdminServiceService, type AdminServiceServer, type AdminTokenInfo } from '../../gen/tether/v1/admin.js';
import type { AuditLog } from '../audit/audit-log.js';
import { parseAdminRole } from '../auth/admin-roles.js';
import type { AdminCaller, AdminTokens } from '../auth/admin-tokens.js';
import type { AdminTokenRecord } from '../store/admin-token-store.js';
import { guardAdminService } from './admin-guard.js';
import type { AgentManager } from '../agents/agent-manager.js';
import type { Authenticator } from '../auth/authenticator.js';
import { unary } from '../grpc/status.js';
import type { HostDrains } from '../hosts/host-drain.js';
import type { HostService } from '../hosts/host-service.js';
import type { Store } from '../store/store.js';
import type { KeyRevoker } from '../tokens/key-revoker.js';
import { AUDIENCE_KEY_PURPOSE, TOKEN_KEY_PURPOSE, type SigningKeyRing } from '../tokens/signing-keys.js';
import type { Clock } from '../../common/clock.js';
import type { DeliveryManager } from '../delivery/delivery-manager.js';
import type { HeartbeatLedger } from './heartbeat-ledger.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import type { MessageStateName } from '../store/store.js';
import { decodePageToken, encodePageToken, labelsFromProto, pageSize, restartPolicyFromProto, specFromProto, toAgentInfo, toAgentTransition } from './convert.js';
import { jwkToMessage } from '../tokens/jwk-message.js';
import type { EventWatchers } from '../event-log/event-watchers.js';
import { watchEventsHandler } from './watch-events.js';

/** What AdminService needs. */
export interface AdminServiceDeps {
  authenticator: Authenticator;
  adminTokens: AdminTokens;
  audit: AuditLog;
  agents: AgentManager;
  hosts: HostService;
  store: Store;
  keys: SigningKeyRing;
  /** The federation keys (ES256) of audience tokens; undefined without an issuer URL. */
  federationKeys: SigningKeyRing | undefined;
  clock: Clock;
  heartbeats: HeartbeatLedger;
  delivery: DeliveryManager;
  logger: Logger;
  /** Revokes signing keys and replaces what they signed. */
  keyRevoker: KeyRevoker;
  drains: HostDrains;
  /** The WatchEvents streams. */
  watchers: EventWatchers;
}

/** The longest DrainHost waits for progress in one call (the CLI calls again). */
const MAX_DRAIN_WAIT_MS = 60_000;

/** An admin token as the API shows it (never its hash). */
function toAdminTokenInfo(token: AdminTokenRecord): AdminTokenInfo {
  return { tokenId: token.tokenId, name: token.name, role: token.role, createdAtMs: token.createdAtMs, createdBy: token.createdBy, retiredAtMs: token.retiredAtMs ?? 0 };
}

/**
 * The operator API. Every call goes through {@link guardAdminService} first:
 * the admin token is checked, its role must allow the method, and the call is audited.
 */
export function adminService(deps: AdminServiceDeps): AdminServiceServer {
  const { authenticator, adminTokens, audit, agents, hosts, store, keys, federationKeys, keyRevoker, clock, heartbeats, delivery, drains } = deps;
  /** The key ring of `purpose` ("" is Tether's own tokens). */
  const ringFor = (purpose = ''): SigningKeyRing | undefined => {
    if (purpose === '' || purpose === TOKEN_KEY_PURPOSE) return keys;
    if (purpose === AUDIENCE_KEY_PURPOSE) return federationKeys;
    throw new InvalidArgumentError(`purpose must be "${TOKEN_KEY_PURPOSE}" or "${AUDIENCE_KEY_PURPOSE}", got ${JSON.stringify(purpose.slice(0, 64))}`);
  };
  const logger = deps.logger.child({ component: 'admin' });
  /** Who makes each call in flight (set by the guard before the handler runs). */
  const callers = new WeakMap<object, AdminCaller>();
  const handlers: AdminServiceServer = {
    enrollHost: unary(logger, async (request) => {
      const { host, joinToken } = await hosts.enroll(request.name, request.joinTtlMs);
      return { hostId: host.hostId, joinToken, joinExpiresAtMs: host.joinExpiresAtMs };
    }),
    listHosts: unary(logger, async (request) => {
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
          schedulable: host.isSchedulable,
          drainState: host.drainState,
        })),
        nextPageToken: encodePageToken(page.nextAfterId),
      };
    }),
    drainHost: unary(logger, async (request) => {
      if (request.hostId === '') throw new InvalidArgumentError('host_id is required');
      if (request.waitMs < 0) throw new InvalidArgumentError('wait_ms must not be negative');
      const started = request.watch ? await drains.status(request.hostId, 0) : await drains.drain(request.hostId, 'operator');
      if (request.watch && started.state === '' && started.agents.length === 0) throw new NotFoundError(`host ${request.hostId} is not drained`);
      const status = request.waitMs === 0 || started.isSettled ? started : await drains.status(request.hostId, Math.min(request.waitMs, MAX_DRAIN_WAIT_MS));
      return {
        hostId: status.hostId,
        state: status.state,
        agents: status.agents.map((a) => ({ agentId: a.agentId, outcome: a.outcome, targetHostId: a.targetHostId, reason: a.reason, atMs: a.atMs })),
        settled: status.isSettled,
      };
    }),
    uncordonHost: unary(logger, async (request) => {
      if (request.hostId === '') throw new InvalidArgumentError('host_id is required');
      return { previousDrainState: await drains.uncordon(request.hostId) };
    }),
    revokeHost: unary(logger, async (request) => {
      await hosts.revoke(request.hostId);
      const moved = await agents.evacuateHost(request.hostId);
      return { agentsMoved: moved };
    }),
    rotateSigningKey: unary(logger, async (request) => {
      const ring = ringFor(request.purpose);
      if (ring === undefined) throw new FailedPreconditionError('there are no audience (federation) keys: the control plane runs without --issuer-url');
      const rotation = await ring.rotate();
      return {
        keyId: rotation.kid,
        retiredKeyId: rotation.retiredKid,
        retiredVerifyUntilMs: rotation.retiredVerifyUntilMs,
        standbyKeyId: rotation.standbyKid,
      };
    }),
    listSigningKeys: unary(logger, () => {
      return Promise.resolve({
        keys: [keys, ...(federationKeys === undefined ? [] : [federationKeys])].flatMap((ring) => ring.list().map((key) => ({ ...key, alg: ring.algorithm }))).map((key) => ({
          keyId: key.kid,
          purpose: key.purpose,
          alg: key.alg,
          state: key.state,
          createdAtMs: key.createdAtMs,
          signingSinceMs: key.signingSinceMs ?? 0,
          retiredAtMs: key.retiredAtMs ?? 0,
          verifyUntilMs: key.verifyUntilMs ?? 0,
        })),
      });
    }),
    revokeSigningKey: unary(logger, async (request) => {
      if (request.keyId === '') throw new InvalidArgumentError('key_id is required');
      const report = await keyRevoker.revoke(request.keyId);
      return {
        keyId: report.kid,
        signerKeyId: report.signerKid,
        hostsResigned: report.hostsResigned,
        hostsToReenroll: report.hostsToReenroll,
        agentsScheduled: report.agentsScheduled,
        agentsAtReconnect: report.agentsAtReconnect,
        resignWindowMs: report.windowMs,
      };
    }),
    dispatchAgent: unary(logger, async (request) => {
      const agent = await agents.dispatch({
        agentId: request.agentId,
        name: request.name,
        spec: specFromProto(request.spec),
        hostId: request.hostId,
        hostLabels: labelsFromProto(request.hostLabels),
        restartPolicy: restartPolicyFromProto(request.restartPolicy),
      });
      return { agent: toAgentInfo(agent) };
    }),
    ensureAgent: unary(logger, async (request) => {
      const { agent, isCreated, isUpdated } = await agents.ensure(
        {
          agentId: request.agentId,
          name: request.name,
          spec: specFromProto(request.spec),
          hostId: request.hostId,
          hostLabels: labelsFromProto(request.hostLabels),
          restartPolicy: restartPolicyFromProto(request.restartPolicy),
        },
        request.update,
      );
      return { agent: toAgentInfo(agent, heartbeats.last(agent.agentId)), created: isCreated, updated: isUpdated };
    }),
    stopAgent: unary(logger, async (request) => {
      const agent = await agents.stop(request.agentId, request.reason);
      return { agent: toAgentInfo(agent) };
    }),
    rotateAgentCredential: unary(logger, async (request) => {
      const agent = await agents.rotate(request.agentId, 'forced');
      return { generation: agent?.generation ?? 0, expiresAtMs: agent?.expiresAtMs ?? 0 };
    }),
    listAgents: unary(logger, async (request) => {
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
    getAgent: unary(logger, async (request) => {
      const agent = await agents.get(request.agentId);
      return { agent: toAgentInfo(agent, heartbeats.last(agent.agentId)) };
    }),
    describeAgent: unary(logger, async (request) => {
      const { agent, transitions } = await agents.describe(request.agentId);
      return { agent: toAgentInfo(agent, heartbeats.last(agent.agentId)), transitions: transitions.map(toAgentTransition) };
    }),
    sendMessages: unary(logger, async (request) => {
      const results = await delivery.send(request.agentId, { kind: 'operator' }, request.messages);
      return { messages: results.map((r) => ({ id: r.id, seq: r.seq, duplicate: r.isDuplicate })) };
    }),
    listMessages: unary(logger, async (request) => {
      const states: MessageStateName[] = request.state === 'dead' ? ['dead'] : request.state === 'pending' || request.state === '' ? ['pending'] : [];
      if (states.length === 0) throw new InvalidArgumentError('state must be "pending" or "dead"');
      await agents.get(request.agentId);
      const limit = pageSize(request.pageSize);
      const afterSeq = Number(decodePageToken(request.pageToken) ?? '0');
      const messages = await store.listMessages(request.agentId, states, Number.isSafeInteger(afterSeq) ? afterSeq : 0, limit + 1);
      const page = messages.slice(0, limit);
      return {
        messages: page.map((m) => ({
          agentId: m.agentId,
          seq: m.seq,
          id: m.id,
          from: m.from,
          contentType: m.contentType,
          sizeBytes: m.payload.length,
          createdAtMs: m.createdAtMs,
          state: m.state,
          attempts: m.attempts,
          lastError: m.lastError,
        })),
        nextPageToken: messages.length > limit ? encodePageToken(String(page[page.length - 1]?.seq ?? 0)) : '',
      };
    }),
    requeueMessage: unary(logger, async (request) => {
      const seq = await delivery.requeue(request.agentId, request.seq);
      return { seq };
    }),
    purgeMessage: unary(logger, async (request) => {
      await store.purgeMessage(request.agentId, request.seq);
      return {};
    }),
    getJwks: unary(logger, (request) => {
      const ring = ringFor(request.purpose);
      return Promise.resolve({ keys: ring === undefined ? [] : ring.jwks(clock.now()).keys.map(jwkToMessage) });
    }),
    listAdminTokens: unary(logger, async (request) => {
      const limit = pageSize(request.pageSize);
      const tokens = await adminTokens.list(decodePageToken(request.pageToken), limit + 1);
      const page = tokens.slice(0, limit);
      return { tokens: page.map(toAdminTokenInfo), nextPageToken: tokens.length > limit ? encodePageToken(page[page.length - 1]?.tokenId ?? null) : '' };
    }),
    addAdminToken: unary(logger, async (request, call) => {
      const role = parseAdminRole(request.role);
      if (role === undefined) throw new InvalidArgumentError('role must be "admin" or "viewer"');
      const caller = callers.get(call);
      if (caller === undefined) throw new Error('an admin call without its caller');
      const { record, token } = await adminTokens.add(request.name, role, caller.tokenId);
      logger.info({ tokenId: record.tokenId, role, createdBy: caller.tokenId }, 'admin token added');
      return { token: toAdminTokenInfo(record), secretToken: token };
    }),
    retireAdminToken: unary(logger, async (request, call) => {
      const record = await adminTokens.retire(request.tokenId);
      logger.info({ tokenId: record.tokenId, retiredBy: callers.get(call)?.tokenId }, 'admin token retired');
      return { token: toAdminTokenInfo(record) };
    }),
    listAuditRecords: unary(logger, async (request) => {
      const limit = pageSize(request.pageSize);
      const afterId = Number(decodePageToken(request.pageToken) ?? '0');
      if (!Number.isSafeInteger(afterId) || afterId < 0) throw new InvalidArgumentError('page_token is not one this call returned');
      if (request.sinceMs < 0) throw new InvalidArgumentError('since_ms must not be negative');
      const records = await audit.list({
        afterId,
        limit: limit + 1,
        ...(request.tokenId === '' ? {} : { tokenId: request.tokenId }),
        ...(request.sinceMs === 0 ? {} : { sinceMs: request.sinceMs }),
      });
      const page = records.slice(0, limit);
      return {
        records: page.map((r) => ({ id: r.id, atMs: r.atMs, tokenId: r.tokenId, method: r.method, targets: r.targets, code: r.code, status: grpcStatus[r.code] ?? String(r.code) })),
        nextPageToken: records.length > limit ? encodePageToken(String(page[page.length - 1]?.id ?? 0)) : '',
      };
    }),
    watchEvents: watchEventsHandler({ watchers: deps.watchers, logger }),
  };
  return guardAdminService(AdminServiceService, handlers, { authenticator, audit, logger, onAuthorized: (call, caller) => callers.set(call, caller) });
}
