/**
 * Audience tokens: MintToken on a real control plane, verified by test
 * services the way a third party would (offline, against the JWKS), refused
 * by the control plane itself, refused for the control plane's own audience,
 * and never outliving the agent token they were minted with.
 */
import * as grpc from '@grpc/grpc-js';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { AgentClient } from '../../agent-host/tools/agent-client.js';
import { AudienceTokens, type AudienceTokenMinter } from '../../agent-host/tools/audience-tokens.js';
import { bearerChannel } from '../../agent-host/tools/bearer-channel.js';
import { fromHolder, type ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { fetchAs } from '../../agent-host/tools/fetch-as.js';
import { InvalidArgumentError, PermissionDeniedError, UnauthenticatedError } from '../../common/errors.js';
import { MAX_AUDIENCE_LENGTH } from '../../control-plane/services/agent-service.js';
import { AUDIENCE_TOKEN_TYPE, DEFAULT_ISSUER, startGrpcAudienceService, startHttpAudienceService } from '../support/audience-services.js';
import { bearer, call, Harness, type HarnessOptions, statusOf } from '../support/harness.js';
import { nextEvent } from '../support/wait.js';
import { jwksDocument } from '../../control-plane/tokens/jwk-message.js';

const AGENT_ID = 'aud-1';
const OWN_AUDIENCE = 'tether:control-plane';

describe('audience tokens', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  /** A control plane with its JWKS on HTTP, one host, and agent {@link AGENT_ID}. */
  async function start(options: HarnessOptions = {}): Promise<{ h: Harness; hostId: string; credentials: ReadOnlyCredentials; jwksUrl: string }> {
    const h = await Harness.start({ httpAddress: '127.0.0.1:0', ...options });
    harness = h;
    const { host, hostId } = await h.startHost('aud-host');
    const started = nextEvent<{ agentId: string; credentials: ReadOnlyCredentials }>(host.events, 'agent-started', (e) => e.agentId === AGENT_ID);
    await h.dispatch(host, hostId, AGENT_ID);
    const { credentials } = await started;
    return { h, hostId, credentials, jwksUrl: `http://127.0.0.1:${h.cp.httpPort}/.well-known/jwks.json` };
  }

  /** AudienceTokens on its own AgentClient for the agent, closed after the test. */
  function tokensOf(h: Harness, credentials: ReadOnlyCredentials): AudienceTokens {
    const tokens = new AudienceTokens({ target: h.target, source: fromHolder(credentials), clock: h.clock });
    onTestFinished(() => tokens.close());
    return tokens;
  }

  it("is accepted by its audience's service through the JWKS, and refused by another service and by the control plane", async () => {
    const { h, hostId, credentials, jwksUrl } = await start();
    const billing = await startHttpAudienceService({ jwksUrl, audience: 'billing', clock: h.clock });
    onTestFinished(() => billing.close());
    const inventory = await startHttpAudienceService({ jwksUrl, audience: 'inventory', clock: h.clock });
    onTestFinished(() => inventory.close());
    const tokens = tokensOf(h, credentials);

    const response = await fetchAs(tokens.source('billing'), billing.url);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ sub: AGENT_ID, aud: 'billing' });
    const minted = await tokens.tokenFor('billing');
    expect(billing.accepted).toHaveLength(1);
    expect(billing.accepted[0]).toMatchObject({ iss: DEFAULT_ISSUER, aud: 'billing', sub: AGENT_ID, host: hostId, gen: 1, jti: minted.tokenId });
    expect(decodeProtectedHeader(minted.token)).toMatchObject({ typ: AUDIENCE_TOKEN_TYPE, alg: 'EdDSA', kid: minted.keyId });
    // Default lifetime: 5 minutes.
    expect(minted.expiresAtMs - minted.issuedAtMs).toBe(300_000);
    expect(minted.generation).toBe(credentials.generation);

    // The same check offline, against the JWKS from AdminService.GetJwks.
    const jwks = jwksDocument(await call(h.admin.getJwks.bind(h.admin), {}));
    const { payload, protectedHeader } = await jwtVerify(minted.token, createLocalJWKSet(jwks), {
      issuer: DEFAULT_ISSUER,
      audience: 'billing',
      typ: AUDIENCE_TOKEN_TYPE,
      currentDate: new Date(h.clock.now()),
    });
    expect(payload.sub).toBe(AGENT_ID);
    expect(protectedHeader.typ).toBe(AUDIENCE_TOKEN_TYPE);

    // Replayed against another service: refused.
    const replayed = await fetchAs({ get: () => minted.token }, inventory.url);
    expect(replayed.status).toBe(401);
    expect(inventory.refused).toBe(1);
    // The agent token itself is for the control plane only.
    expect((await fetchAs(fromHolder(credentials), billing.url)).status).toBe(401);
    // The control plane refuses the audience token on AgentService.
    const raw = h.agentClient();
    expect(await statusOf(call(raw.whoAmI.bind(raw), {}, bearer(minted.token)))).toBe(grpc.status.UNAUTHENTICATED);
    expect(await statusOf(call(raw.heartbeat.bind(raw), { agentId: AGENT_ID }, bearer(minted.token)))).toBe(grpc.status.UNAUTHENTICATED);
    expect(await statusOf(call(raw.mintToken.bind(raw), { audience: 'other' }, bearer(minted.token)))).toBe(grpc.status.UNAUTHENTICATED);
    // The mint is logged by jti, kid and aud; never the token (the harness also checks no log line holds anything JWT-shaped).
    const minting = h.logs.records().find((r) => r.msg === 'audience token minted' && r.jti === minted.tokenId);
    expect(minting).toMatchObject({ aud: 'billing', kid: minted.keyId, agentId: AGENT_ID });
    expect(JSON.stringify(minting)).not.toContain(minted.token);
  });

  it("refuses the control plane's own audience, an empty, an over-long and a malformed one", async () => {
    const { h, credentials } = await start();
    const client = new AgentClient({ target: h.target, source: fromHolder(credentials) });
    onTestFinished(() => client.close());
    await expect(client.mintToken(OWN_AUDIENCE)).rejects.toBeInstanceOf(PermissionDeniedError);
    await expect(client.mintToken('')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.mintToken('a'.repeat(MAX_AUDIENCE_LENGTH + 1))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.mintToken('has space')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.mintToken('line\nbreak')).rejects.toBeInstanceOf(InvalidArgumentError);
    expect((await client.mintToken('a'.repeat(MAX_AUDIENCE_LENGTH))).audience).toHaveLength(MAX_AUDIENCE_LENGTH);
    // The wire statuses, as any gRPC client sees them.
    const raw = h.agentClient();
    const token = credentials.get();
    expect(await statusOf(call(raw.mintToken.bind(raw), { audience: OWN_AUDIENCE }, bearer(token)))).toBe(grpc.status.PERMISSION_DENIED);
    expect(await statusOf(call(raw.mintToken.bind(raw), { audience: '' }, bearer(token)))).toBe(grpc.status.INVALID_ARGUMENT);
    expect(await statusOf(call(raw.mintToken.bind(raw), { audience: 'billing' }))).toBe(grpc.status.UNAUTHENTICATED);
    // Through the cache too; nothing refused is cached.
    const tokens = tokensOf(h, credentials);
    await expect(tokens.tokenFor(OWN_AUDIENCE)).rejects.toBeInstanceOf(PermissionDeniedError);
    expect(tokens.describe(OWN_AUDIENCE)).toBeUndefined();
  });

  it("never outlives the agent token, and honours audienceTokenTtlMs", async () => {
    // Agent tokens live 10 min and are not rotated; audience tokens 2 min.
    const { h, credentials } = await start({ agentTokenTtlMs: 600_000, audienceTokenTtlMs: 120_000, isRotationEnabled: false });
    const tokens = tokensOf(h, credentials);
    const agentExpiresAtMs = credentials.expiresAtMs;
    const fresh = await tokens.tokenFor('billing');
    expect(fresh.expiresAtMs - fresh.issuedAtMs).toBe(120_000);

    h.clock.advance(540_000); // 60 s of the agent token left
    const capped = await tokens.tokenFor('billing');
    expect(capped.tokenId).not.toBe(fresh.tokenId);
    expect(capped.expiresAtMs).toBe(agentExpiresAtMs);
    expect((decodeJwt(capped.token).exp ?? Infinity) * 1000).toBe(agentExpiresAtMs);
    expect(credentials.generation).toBe(1);

    h.clock.advance(50_000); // 10 s left
    const last = await tokens.tokenFor('billing');
    expect(last.expiresAtMs).toBe(agentExpiresAtMs);
    expect(last.expiresAtMs - last.issuedAtMs).toBe(10_000);

    h.clock.advance(10_000); // the agent token has expired: nothing more can be minted
    await expect(tokens.tokenFor('billing')).rejects.toBeInstanceOf(UnauthenticatedError);
  });

  it('is cached per audience on the injected clock and refreshed before it runs out', async () => {
    const { h, credentials } = await start();
    const client = new AgentClient({ target: h.target, source: fromHolder(credentials) });
    onTestFinished(() => client.close());
    const asked: string[] = [];
    const counting: AudienceTokenMinter = {
      mintToken: (audience, options) => {
        asked.push(audience);
        return client.mintToken(audience, options);
      },
    };
    const tokens = new AudienceTokens({ client: counting, clock: h.clock });
    onTestFinished(() => tokens.close());
    const first = await tokens.tokenFor('billing');
    expect(await tokens.tokenFor('billing')).toBe(first);
    await tokens.tokenFor('inventory');
    expect(asked).toEqual(['billing', 'inventory']);
    // 5 min tokens are refreshed once less than 60 s (20 %) is left.
    h.clock.advance(first.expiresAtMs - 60_000 - h.clock.now());
    expect(await tokens.tokenFor('billing')).toBe(first);
    h.clock.advance(1);
    const second = await tokens.tokenFor('billing');
    expect(second.tokenId).not.toBe(first.tokenId);
    expect(second.expiresAtMs).toBeGreaterThan(first.expiresAtMs);
    expect(asked).toEqual(['billing', 'inventory', 'billing']);
  });

  it('a gRPC call whose audience token cannot be had is never sent', async () => {
    const { h, credentials, jwksUrl } = await start();
    const service = await startGrpcAudienceService({ jwksUrl, audience: 'inventory', clock: h.clock });
    onTestFinished(() => service.close());
    const tokens = tokensOf(h, credentials);
    /** Health.Check (an empty request is a valid HealthCheckRequest) through a client built by bearerChannel. */
    const check = async (audience: string): Promise<grpc.status | 'ok'> => {
      const { credentials: channelCredentials, options } = bearerChannel(service.target, tokens.source(audience));
      const client = new grpc.Client(service.target, channelCredentials, options);
      try {
        return await statusOf(
          new Promise((resolve, reject) => {
            client.makeUnaryRequest('/grpc.health.v1.Health/Check', () => Buffer.alloc(0), (bytes: Buffer) => bytes, {}, (err, value) =>
              err === null ? resolve(value) : reject(err),
            );
          }),
        );
      } finally {
        client.close();
      }
    };
    expect(await check('inventory')).toBe('ok');
    expect(service.requests).toBe(1);
    expect(service.accepted[0]?.sub).toBe(AGENT_ID);
    // MintToken refuses the control plane's audience: the call fails locally, UNAUTHENTICATED, and reaches nobody.
    expect(await check(OWN_AUDIENCE)).toBe(grpc.status.UNAUTHENTICATED);
    // A token for another audience reaches the service and is refused there.
    expect(await check('billing')).toBe(grpc.status.UNAUTHENTICATED);
    expect(service.requests).toBe(2);
    expect(service.refused).toBe(1);
  });
});
