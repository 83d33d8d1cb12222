/**
 * Federation (issue 17): with `--issuer-url`, audience tokens are ES256 under
 * that `iss`, and an independent relying party (jose, driven only by the
 * OpenID discovery document it fetches from the issuer URL, as AWS STS or GCP
 * would) verifies them; the federation JWKS holds only their keys, is bounded,
 * and a rotation publishes a key before it signs and keeps the old one while
 * its tokens live.
 */
import * as grpc from '@grpc/grpc-js';
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JWTVerifyResult } from 'jose';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { AgentClient } from '../../agent-host/tools/agent-client.js';
import { fromHolder, type ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { MAX_TOKEN_LENGTH } from '../../control-plane/tokens/token-kinds.js';
import { bearer, call, Harness, type HarnessOptions, statusOf } from '../support/harness.js';
import { startHttpFront, type HttpFront } from '../support/http-front.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const AGENT_ID = 'fed-1';
const STS = 'sts.amazonaws.com';
const JWKS_MAX_AGE_MS = 60_000;

interface Discovery {
  issuer: string;
  jwks_uri: string;
  id_token_signing_alg_values_supported: string[];
  response_types_supported: string[];
  subject_types_supported: string[];
  claims_supported: string[];
}

/** What a relying party does: discover the issuer from its URL, then verify against the JWKS the document names. */
async function relyingParty(issuerUrl: string): Promise<{ discovery: Discovery; verify: (token: string, audience: string, nowMs: number) => Promise<JWTVerifyResult> }> {
  const response = await fetch(`${issuerUrl}/.well-known/openid-configuration`);
  expect(response.status).toBe(200);
  const discovery = (await response.json()) as Discovery;
  // A fresh fetch when a kid is unknown (no cooldown), as a relying party meeting a new key does.
  const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri), { cooldownDuration: 0 });
  return {
    discovery,
    verify: (token, audience, nowMs) =>
      jwtVerify(token, jwks, { issuer: discovery.issuer, audience, algorithms: discovery.id_token_signing_alg_values_supported, currentDate: new Date(nowMs) }),
  };
}

async function fetchJson<T>(url: string): Promise<T> {
  const response = await fetch(url);
  expect(response.status).toBe(200);
  return (await response.json()) as T;
}

describe('federation: OIDC discovery and ES256 audience tokens', () => {
  let harness: Harness | undefined;
  let front: HttpFront | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await front?.close();
    front = undefined;
  });

  /** A front (the issuer URL) before a control plane with that issuer URL, one host labelled team=a, and agent {@link AGENT_ID}. */
  async function start(options: HarnessOptions = {}, path = ''): Promise<{ h: Harness; hostId: string; issuerUrl: string; client: AgentClient; credentials: ReadOnlyCredentials }> {
    front = await startHttpFront(path);
    const h = await Harness.start({ httpAddress: '127.0.0.1:0', issuerUrl: front.url, ...options });
    harness = h;
    front.pointAt(h.cp.httpPort);
    const { host, hostId } = await h.startHost('fed-host', { labels: [{ key: 'team', value: 'a' }] });
    const started = nextEvent<{ agentId: string; credentials: ReadOnlyCredentials }>(host.events, 'agent-started', (e) => e.agentId === AGENT_ID);
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: AGENT_ID,
      name: 'billing-bot',
      hostId,
      hostLabels: [{ key: 'team', value: 'a' }],
      spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' },
    });
    const { credentials } = await started;
    const client = new AgentClient({ target: h.target, source: fromHolder(credentials) });
    onTestFinished(() => client.close());
    return { h, hostId, issuerUrl: front.url, client, credentials };
  }

  it('is verified by a relying party through discovery, and refused for another audience, expired, or signed by a key no longer published', async () => {
    const { h, hostId, issuerUrl, client, credentials } = await start();
    const rp = await relyingParty(issuerUrl);
    expect(rp.discovery).toEqual({
      issuer: issuerUrl,
      jwks_uri: `${issuerUrl}/.well-known/federation-jwks.json`,
      id_token_signing_alg_values_supported: ['ES256'],
      response_types_supported: ['id_token'],
      subject_types_supported: ['public'],
      claims_supported: ['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti', 'host', 'gen', 'name', 'labels'],
    });

    const minted = await client.mintToken(STS);
    expect(decodeProtectedHeader(minted.token)).toEqual({ alg: 'ES256', kid: minted.keyId, typ: 'tether-aud+jwt' });
    const { payload } = await rp.verify(minted.token, STS, h.clock.now());
    expect(payload).toEqual({
      iss: issuerUrl,
      aud: STS,
      sub: AGENT_ID,
      host: hostId,
      gen: minted.generation,
      name: 'billing-bot',
      labels: { team: 'a' },
      jti: minted.tokenId,
      iat: Math.floor(minted.issuedAtMs / 1000),
      nbf: Math.floor(minted.issuedAtMs / 1000),
      exp: minted.expiresAtMs / 1000,
    });
    expect(minted.token.length).toBeLessThan(MAX_TOKEN_LENGTH / 4);

    // The federation JWKS holds only P-256 keys; the control plane's own JWKS (EdDSA, host and agent tokens) none of them.
    const federation = await fetchJson<{ keys: { kty: string; crv: string; alg: string; kid: string }[] }>(rp.discovery.jwks_uri);
    expect(federation.keys.length).toBe(2);
    for (const key of federation.keys) expect(key).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256' });
    const own = await fetchJson<{ keys: { kty: string; kid: string }[] }>(`http://127.0.0.1:${h.cp.httpPort}/.well-known/jwks.json`);
    expect(own.keys.map((key) => key.kty)).toEqual(['OKP', 'OKP']);
    expect(own.keys.map((key) => key.kid)).not.toContain(minted.keyId);
    // GetJwks answers either set.
    expect((await call(h.admin.getJwks.bind(h.admin), { purpose: 'audience' })).keys.map((key) => key.kid).sort()).toEqual(federation.keys.map((key) => key.kid).sort());
    // The agent's own token is not an audience token, and the audience token is not an agent token.
    const raw = h.agentClient();
    expect(await statusOf(call(raw.whoAmI.bind(raw), {}, bearer(minted.token)))).toBe(grpc.status.UNAUTHENTICATED);

    // Another audience: refused.
    await expect(rp.verify(minted.token, 'https://other.example', h.clock.now())).rejects.toBeInstanceOf(errors.JWTClaimValidationFailed);

    // Signed by a key no longer published: the key is rotated out, then pruned once its last token could have expired.
    h.clock.advance(JWKS_MAX_AGE_MS + 1_000);
    const rotated = await call(h.admin.rotateSigningKey.bind(h.admin), { purpose: 'audience' });
    expect(rotated.retiredKeyId).toBe(minted.keyId);
    // Still published (verifying-only): a relying party accepts the token until it expires.
    await expect(rp.verify(minted.token, STS, h.clock.now())).resolves.toBeDefined();
    // Expired: refused.
    h.clock.advance(minted.expiresAtMs - h.clock.now() + 1_000);
    await expect(rp.verify(minted.token, STS, h.clock.now())).rejects.toBeInstanceOf(errors.JWTExpired);
    // Past the retired key's verify-until: pruned, out of the JWKS. Checked at the token's own issue time, so only the key can refuse it.
    h.clock.advance(rotated.retiredVerifyUntilMs - h.clock.now() + 1_000);
    await waitForJwks(rp.discovery.jwks_uri, (kids) => !kids.includes(minted.keyId));
    const fresh = await relyingParty(issuerUrl);
    await expect(fresh.verify(minted.token, STS, minted.issuedAtMs)).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    // A token of the key that signs now verifies (minted once the clock's jumps have let the agent's own token be
    // rotated: its rotation is under way in the background, a store round trip or more behind).
    await waitUntil(() => h.cp.isSettled() && credentials.expiresAtMs > h.clock.now(), "the agent's own token rotated past the clock's jumps");
    const now = await client.mintToken(STS);
    expect(now.keyId).toBe(rotated.keyId);
    await expect(fresh.verify(now.token, STS, h.clock.now())).resolves.toBeDefined();
  });

  it('serves discovery under an issuer URL with a path', async () => {
    const { issuerUrl, client, h } = await start({}, '/tether');
    expect(issuerUrl.endsWith('/tether')).toBe(true);
    const rp = await relyingParty(issuerUrl);
    expect(rp.discovery.issuer).toBe(issuerUrl);
    expect(rp.discovery.jwks_uri).toBe(`${issuerUrl}/.well-known/federation-jwks.json`);
    const minted = await client.mintToken('//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/tether');
    expect(decodeJwt(minted.token).iss).toBe(issuerUrl);
    await expect(rp.verify(minted.token, '//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/tether', h.clock.now())).resolves.toBeDefined();
  });

  it('rotation: a new ES256 key is published before it signs, old tokens verify until they expire, and the JWKS never exceeds its bound', async () => {
    const BOUND = 4;
    const { h, issuerUrl, client } = await start({ maxFederationKeys: BOUND });
    const rp = await relyingParty(issuerUrl);
    const sizes: number[] = [];
    const kidsNow = async (): Promise<string[]> => {
      const jwks = await fetchJson<{ keys: { kid: string }[] }>(rp.discovery.jwks_uri);
      sizes.push(jwks.keys.length);
      return jwks.keys.map((key) => key.kid);
    };
    const rotate = (): Promise<{ keyId: string; retiredKeyId: string; standbyKeyId: string; retiredVerifyUntilMs: number }> =>
      call(h.admin.rotateSigningKey.bind(h.admin), { purpose: 'audience' });

    const first = await client.mintToken(STS);
    const published = await kidsNow();
    expect(published).toContain(first.keyId);
    const standby = published.find((kid) => kid !== first.keyId);
    expect(standby).toBeDefined();
    // The standby is not promoted before it has been published longer than a JWKS may be cached.
    const tooSoon = call(h.admin.rotateSigningKey.bind(h.admin), { purpose: 'audience' });
    expect(await statusOf(tooSoon)).toBe(grpc.status.FAILED_PRECONDITION);

    const tokens = [first];
    const retiredUntil: number[] = [];
    for (let rotation = 0; rotation < BOUND - 2; rotation++) {
      h.clock.advance(JWKS_MAX_AGE_MS + 1_000);
      const before = await kidsNow();
      const done = await rotate();
      // The key that signs now was in the JWKS before it signed.
      expect(before).toContain(done.keyId);
      retiredUntil.push(done.retiredVerifyUntilMs);
      const minted = await client.mintToken(STS);
      expect(minted.keyId).toBe(done.keyId);
      tokens.push(minted);
      // Every token minted so far and not expired still verifies: the keys that signed them are still published.
      for (const token of tokens) {
        if (token.expiresAtMs > h.clock.now()) await expect(rp.verify(token.token, STS, h.clock.now())).resolves.toBeDefined();
      }
      expect(await kidsNow()).toContain(done.standbyKeyId);
    }
    expect(tokens[1]?.keyId).toBe(standby);
    // At the bound: one more rotation is refused, clearly, and nothing is dropped.
    h.clock.advance(JWKS_MAX_AGE_MS + 1_000);
    const atBound = await kidsNow();
    expect(atBound).toHaveLength(BOUND);
    const refused = rotate();
    const err = await refused.then(
      () => undefined,
      (e: unknown) => e as grpc.ServiceError,
    );
    expect(err?.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(err?.details).toContain(`its bound is ${BOUND}`);
    expect(err?.details).toContain('rotate again after that');
    expect(await kidsNow()).toEqual(atBound);
    const last = tokens[tokens.length - 1];
    if (last === undefined) throw new Error('no token');
    await expect(rp.verify(last.token, STS, h.clock.now())).resolves.toBeDefined();

    // Once the oldest retired key's last token has expired it leaves, and a rotation fits again.
    h.clock.advance((retiredUntil[0] ?? 0) - h.clock.now() + 1_000);
    await waitForJwks(rp.discovery.jwks_uri, (kids) => !kids.includes(first.keyId));
    await rotate();
    expect(await kidsNow()).toHaveLength(BOUND);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(BOUND);
    // Key-list shows the purpose and algorithm of each key.
    const listed = await call(h.admin.listSigningKeys.bind(h.admin), {});
    expect(new Set(listed.keys.map((key) => `${key.purpose}/${key.alg}`))).toEqual(new Set(['tokens/EdDSA', 'audience/ES256']));
  });

  it('revokes a federation key: out of the federation JWKS at once, the standby signs, the own keys untouched', async () => {
    const { h, issuerUrl, client } = await start();
    const rp = await relyingParty(issuerUrl);
    const minted = await client.mintToken(STS);
    const ownBefore = (await call(h.admin.getJwks.bind(h.admin), {})).keys.map((key) => key.kid);
    const revoked = await call(h.admin.revokeSigningKey.bind(h.admin), { keyId: minted.keyId });
    expect(revoked.signerKeyId).not.toBe(minted.keyId);
    expect(revoked.agentsScheduled).toBe(0);
    const kids = (await fetchJson<{ keys: { kid: string }[] }>(rp.discovery.jwks_uri)).keys.map((key) => key.kid);
    expect(kids).not.toContain(minted.keyId);
    expect(kids).toContain(revoked.signerKeyId);
    await expect((await relyingParty(issuerUrl)).verify(minted.token, STS, h.clock.now())).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    const next = await client.mintToken(STS);
    expect(next.keyId).toBe(revoked.signerKeyId);
    await expect(rp.verify(next.token, STS, h.clock.now())).resolves.toBeDefined();
    expect((await call(h.admin.getJwks.bind(h.admin), {})).keys.map((key) => key.kid)).toEqual(ownBefore);
  });

  it('refuses a plain-http issuer URL off loopback, and a rotation of audience keys without one', async () => {
    await expect(Harness.start({ issuerUrl: 'http://tether.example.com' })).rejects.toThrow(/https/);
    const h = await Harness.start({ httpAddress: '127.0.0.1:0' });
    harness = h;
    const err = await call(h.admin.rotateSigningKey.bind(h.admin), { purpose: 'audience' }).then(
      () => undefined,
      (e: unknown) => e as grpc.ServiceError,
    );
    expect(err?.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(err?.details).toContain('--issuer-url');
    const discovery = await fetch(`http://127.0.0.1:${h.cp.httpPort}/.well-known/openid-configuration`);
    expect(discovery.status).toBe(404);
  });
});

/** Waits (bounded) until the JWKS at `url` satisfies `check`: the pruner runs on the fake clock's timers. */
async function waitForJwks(url: string, check: (kids: string[]) => boolean): Promise<void> {
  await waitUntil(async () => check((await fetchJson<{ keys: { kid: string }[] }>(url)).keys.map((key) => key.kid)), 'the JWKS to change');
}
