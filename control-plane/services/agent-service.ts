import type { Clock } from '../../common/clock.js';
import { InvalidArgumentError, PermissionDeniedError, TokenExpiredError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { AgentServiceServer } from '../../gen/tether/v1/agent.js';
import type { AgentManager } from '../agents/agent-manager.js';
import type { Authenticator } from '../auth/authenticator.js';
import type { ControlPlaneEvents } from '../events.js';
import { unary } from '../grpc/status.js';
import type { AudienceClaims, TokenIssuer } from '../tokens/token-issuer.js';
import type { TokenClaims } from '../tokens/token-kinds.js';
import { stateToProto } from './convert.js';
import type { DeliveryManager } from '../delivery/delivery-manager.js';
import type { HeartbeatLedger } from './heartbeat-ledger.js';

/** What AgentService needs. */
export interface AgentServiceDeps {
  authenticator: Authenticator;
  agents: AgentManager;
  clock: Clock;
  events: ControlPlaneEvents;
  heartbeats: HeartbeatLedger;
  /** Signs audience tokens (MintToken). */
  issuer: TokenIssuer;
  /** Lifetime of an audience token, capped by the agent token's `exp`. */
  audienceTokenTtlMs: number;
  /** The agent token TTL: half of it is the longest audience token that may be asked for (token files). */
  agentTokenTtlMs: number;
  delivery: DeliveryManager;
  logger: Logger;
}

/** The longest audience MintToken accepts. */
export const MAX_AUDIENCE_LENGTH = 256;

/** An audience: printable ASCII, no spaces (it is compared byte for byte by verifiers). */
const AUDIENCE_PATTERN = /^[\x21-\x7e]+$/;

/**
 * Throws unless `audience` may be minted for: not empty, not over-long, plain
 * printable ASCII, and not the control plane's own (an agent already holds that
 * token; a second, unrevocable one for it would widen what a leak yields).
 */
function requireForeignAudience(audience: string, ownAudience: string): void {
  if (audience === '') throw new InvalidArgumentError('audience is required');
  if (audience.length > MAX_AUDIENCE_LENGTH) throw new InvalidArgumentError(`audience is longer than ${MAX_AUDIENCE_LENGTH} characters`);
  if (!AUDIENCE_PATTERN.test(audience)) throw new InvalidArgumentError('audience must be printable ASCII without spaces');
  if (audience === ownAudience) throw new PermissionDeniedError("tokens for the control plane's own audience are not minted");
}

/** An agent may act only as itself: the id it names must be its token's subject. */
function requireSelf(claims: TokenClaims, agentId: string): void {
  if (agentId !== claims.subject) throw new PermissionDeniedError('an agent may act only as itself');
}

/**
 * The lifetime of an audience token asked for `requestedMs` (absent or 0: the
 * default): at most the longer of the default and half the agent token TTL.
 */
function audienceTtl(requestedMs: number | undefined, defaultMs: number, agentTokenTtlMs: number): number {
  if (requestedMs === undefined || requestedMs === 0) return defaultMs;
  const maxMs = Math.max(defaultMs, Math.floor(agentTokenTtlMs / 2));
  if (!Number.isSafeInteger(requestedMs) || requestedMs < 1_000 || requestedMs > maxMs) {
    throw new InvalidArgumentError(`ttl_ms must be from 1000 to ${maxMs} (the longer of --audience-token-ttl and half the agent token TTL), or 0 for the default`);
  }
  return requestedMs;
}

/** The API agents (and their tools) call with their own agent token. */
export function agentService(deps: AgentServiceDeps): AgentServiceServer {
  const { authenticator, agents, clock, events, heartbeats, issuer, audienceTokenTtlMs } = deps;
  const logger = deps.logger.child({ component: 'agent-api' });
  return {
    heartbeat: unary(logger, async (request, call) => {
      const claims = await authenticator.agent(call.metadata);
      requireSelf(claims, request.agentId);
      const nowMs = clock.now();
      heartbeats.record(claims.subject, nowMs);
      // From memory once known: the token's verification already refused a stopped or moved agent.
      const state = await agents.stateOf(claims.subject);
      events.emit('heartbeat', { agentId: request.agentId, subject: claims.subject, generation: claims.generation, tokenId: claims.tokenId });
      return { serverTimeMs: nowMs, state: stateToProto(state) };
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
    mintToken: unary(logger, async (request, call) => {
      const claims = await authenticator.agent(call.metadata);
      requireForeignAudience(request.audience, issuer.audience);
      // Within the clock tolerance the verifier still accepts an agent token past its `exp`; nothing can be minted from it.
      if (claims.expiresAtMs <= clock.now()) throw new TokenExpiredError('the agent token has expired');
      // Under federation the token names the agent for the target's policies: its name and labels (a store read; minting is not on a hot path).
      let agent: AudienceClaims | undefined;
      if (issuer.isFederated) {
        const record = await agents.get(claims.subject);
        agent = { name: record.name, labels: Object.fromEntries(record.hostLabels.map((label) => [label.key, label.value])) };
      }
      const minted = await issuer.issue({
        kind: 'audience',
        subject: claims.subject,
        hostId: claims.hostId,
        audience: request.audience,
        generation: claims.generation,
        ttlMs: audienceTtl(request.ttlMs, audienceTokenTtlMs, deps.agentTokenTtlMs),
        notAfterMs: claims.expiresAtMs,
        ...(agent === undefined ? {} : { agent }),
      });
      const m = minted.claims;
      logger.info({ agentId: m.subject, aud: m.audience, jti: m.tokenId, kid: m.keyId, gen: m.generation, exp: m.expiresAtMs }, 'audience token minted');
      return {
        token: minted.token,
        audience: m.audience,
        issuedAtMs: m.issuedAtMs,
        expiresAtMs: m.expiresAtMs,
        generation: m.generation,
        keyId: m.keyId,
        tokenId: m.tokenId,
      };
    }),
    sendMessages: unary(logger, async (request, call) => {
      const claims = await authenticator.agent(call.metadata);
      const results = await deps.delivery.send(request.agentId, { kind: 'agent', agentId: claims.subject }, request.messages);
      return { messages: results.map((r) => ({ id: r.id, seq: r.seq, duplicate: r.isDuplicate })) };
    }),
    reportStatus: unary(logger, async (request, call) => {
      const claims = await authenticator.agent(call.metadata);
      requireSelf(claims, request.agentId);
      if (request.status.length > 1024) throw new InvalidArgumentError('status is at most 1 KiB');
      await agents.reportStatus(claims.subject, request.status);
      return {};
    }),
    complete: unary(logger, async (request, call) => {
      const claims = await authenticator.agent(call.metadata);
      requireSelf(claims, request.agentId);
      if (request.detail.length > 1024) throw new InvalidArgumentError('detail is at most 1 KiB');
      await agents.complete(claims.subject, request.detail);
      return {};
    }),
  };
}
