import { createPublicKey, randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { generateKeyPair, type JWK, type JWTPayload } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import { JWKS_MAX_AGE_MS, type ActiveKey } from '../../control-plane/tokens/signing-keys.js';
import type { IssuedToken } from '../../control-plane/tokens/token-kinds.js';
import type { AgentServiceClient } from '../../gen/tether/v1/agent.js';
import { base64url, hs256Jwt, partsOf, signEdDsa, unsecuredJwt, withPayload, type TokenParts } from '../support/forge-token.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { probeHostConnect } from '../support/host-stream-probe.js';
import { jwksDocument } from '../../control-plane/tokens/jwk-message.js';

const { UNAUTHENTICATED } = grpc.status;
const AGENT_ID = 'good';
const TOLERANCE_MS = 30_000;

/** What a case needs to build its token: a real agent's token and the control plane's real key. */
interface Forge {
  harness: Harness;
  hostId: string;
  /** The good agent's current token, as its host handed it over. */
  goodToken: string;
  /** That token decoded: copy and change one thing. */
  good: TokenParts;
  /** The control plane's real signing key. */
  key: ActiveKey;
  /** The real public key as served by AdminService.GetJwks. */
  publicJwk: JWK;
  /** The GetJwks answer as a JWKS document. */
  jwksJson: string;
}

/** A bad token and how to make it. */
interface BadToken {
  name: string;
  token: (forge: Forge) => Promise<string> | string;
}

/** The good token's claims with a fresh `jti`, so each forged token is a new cache key. */
function claims(forge: Forge, change: JWTPayload = {}): JWTPayload {
  return { ...forge.good.payload, jti: randomUUID(), ...change };
}

function without(payload: JWTPayload, name: string): JWTPayload {
  const copy = { ...payload };
  delete copy[name];
  return copy;
}

/** Agent-token fields for the issuer, matching the live agent (so only the one wrong thing is wrong). */
function agentFields(forge: Forge): { subject: string; hostId: string; incarnation: number; generation: number } {
  const { payload } = forge.good;
  return { subject: AGENT_ID, hostId: forge.hostId, incarnation: Number(payload.inc), generation: Number(payload.gen) };
}

const forged: BadToken[] = [
  {
    name: 'unknown kid (a fresh Ed25519 key, random kid)',
    token: async (f) => {
      const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
      return signEdDsa({ ...f.good.header, kid: randomUUID() }, claims(f), privateKey);
    },
  },
  {
    name: 'the real kid, signed by another Ed25519 key',
    token: async (f) => {
      const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
      return signEdDsa(f.good.header, claims(f), privateKey);
    },
  },
  { name: 'alg none, empty signature', token: (f) => unsecuredJwt(f.good.header, claims(f)) },
  {
    name: 'alg none, the real signature kept',
    token: (f) => {
      const [, payload, signature] = f.goodToken.split('.');
      return `${base64url(JSON.stringify({ ...f.good.header, alg: 'none' }))}.${payload ?? ''}.${signature ?? ''}`;
    },
  },
  {
    name: 'HS256 keyed with the raw public key bytes (JWK x)',
    token: (f) => hs256Jwt(f.good.header, claims(f), Buffer.from(f.publicJwk.x ?? '', 'base64url')),
  },
  { name: 'HS256 keyed with the JWK x text', token: (f) => hs256Jwt(f.good.header, claims(f), f.publicJwk.x ?? '') },
  { name: 'HS256 keyed with the public JWK JSON', token: (f) => hs256Jwt(f.good.header, claims(f), JSON.stringify(f.publicJwk)) },
  { name: 'HS256 keyed with the whole JWKS document', token: (f) => hs256Jwt(f.good.header, claims(f), f.jwksJson) },
  {
    name: 'HS256 keyed with the public key as SPKI PEM',
    token: (f) => {
      const pem = createPublicKey({ key: f.publicJwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
      return hs256Jwt(f.good.header, claims(f), pem);
    },
  },
  { name: 'payload tampered: sub changed, signature kept', token: (f) => withPayload(f.goodToken, { ...f.good.payload, sub: 'someone-else' }) },
  {
    name: 'payload tampered: exp extended, signature kept',
    token: (f) => withPayload(f.goodToken, { ...f.good.payload, exp: Number(f.good.payload.exp) + 86_400 }),
  },
  { name: 'wrong iss (real key)', token: (f) => signEdDsa(f.good.header, claims(f, { iss: 'not-tether' }), f.key.privateKey) },
  { name: 'no iss (real key)', token: (f) => signEdDsa(f.good.header, without(claims(f), 'iss'), f.key.privateKey) },
  {
    name: 'wrong aud (issuer, audience token for another service)',
    token: async (f) => (await f.harness.cp.issuer.issue({ kind: 'agent', ...agentFields(f), ttlMs: 3_600_000, audience: 'https://other.example' })).token,
  },
  { name: 'wrong aud (real key)', token: (f) => signEdDsa(f.good.header, claims(f, { aud: 'https://other.example' }), f.key.privateKey) },
  {
    name: 'typ tether-host+jwt (issuer, host kind, agent claims)',
    token: async (f) => (await f.harness.cp.issuer.issue({ kind: 'host', ...agentFields(f), ttlMs: 3_600_000 })).token,
  },
  {
    name: 'typ tether-aud+jwt with the control plane as audience (issuer)',
    token: async (f) =>
      (await f.harness.cp.issuer.issue({ kind: 'audience', ...agentFields(f), ttlMs: 3_600_000, audience: f.harness.cp.issuer.audience })).token,
  },
  { name: 'typ JWT (real key)', token: (f) => signEdDsa({ ...f.good.header, typ: 'JWT' }, claims(f), f.key.privateKey) },
  { name: 'no typ (real key)', token: (f) => signEdDsa({ alg: 'EdDSA', kid: f.key.kid }, claims(f), f.key.privateKey) },
  { name: 'no kid (real key)', token: (f) => signEdDsa({ alg: 'EdDSA', typ: f.good.header.typ }, claims(f), f.key.privateKey) },
  { name: 'no exp (real key)', token: (f) => signEdDsa(f.good.header, without(claims(f), 'exp'), f.key.privateKey) },
  {
    name: 'nbf an hour ahead (real key)',
    token: (f) => signEdDsa(f.good.header, claims(f, { nbf: Number(f.good.payload.iat) + 3_600 }), f.key.privateKey),
  },
  { name: 'no gen (real key)', token: (f) => signEdDsa(f.good.header, without(claims(f), 'gen'), f.key.privateKey) },
  { name: 'no host (real key)', token: (f) => signEdDsa(f.good.header, without(claims(f), 'host'), f.key.privateKey) },
  {
    name: 'a generation never issued (real key)',
    token: (f) => signEdDsa(f.good.header, claims(f, { gen: Number(f.good.payload.gen) + 1 }), f.key.privateKey),
  },
  // A claim of the wrong type or range once passed the verifier and failed WhoAmI's reply as INTERNAL.
  { name: 'a negative gen (issuer)', token: async (f) => (await f.harness.cp.issuer.issue({ kind: 'agent', ...agentFields(f), ttlMs: 3_600_000, generation: -1 })).token },
  { name: 'gen as a string (real key)', token: (f) => signEdDsa(f.good.header, claims(f, { gen: String(f.good.payload.gen) }), f.key.privateKey) },
  { name: 'a negative inc (real key)', token: (f) => signEdDsa(f.good.header, claims(f, { inc: -1 }), f.key.privateKey) },
  { name: 'sub as a number (real key)', token: (f) => signEdDsa(f.good.header, claims(f, { sub: 7 as unknown as string }), f.key.privateKey) },
  { name: 'a negative iat (real key)', token: (f) => signEdDsa(f.good.header, claims(f, { iat: -1 }), f.key.privateKey) },
  // Decided strict: the issuer writes one audience, as a string, and one spelling of typ.
  { name: 'aud an array holding ours (real key)', token: (f) => signEdDsa(f.good.header, claims(f, { aud: [String(f.good.payload.aud)] }), f.key.privateKey) },
  { name: 'typ upper-cased (real key)', token: (f) => signEdDsa({ ...f.good.header, typ: String(f.good.header.typ).toUpperCase() }, claims(f), f.key.privateKey) },
  {
    name: 'another incarnation (real key)',
    token: (f) => signEdDsa(f.good.header, claims(f, { inc: Number(f.good.payload.inc) + 1 }), f.key.privateKey),
  },
  {
    name: 'a host it does not run on (real key)',
    token: (f) => signEdDsa(f.good.header, claims(f, { host: 'elsewhere-00000000' }), f.key.privateKey),
  },
  {
    name: '16 KiB (real signature, padded claim)',
    token: async (f) => {
      const token = await signEdDsa(f.good.header, claims(f, { pad: 'x'.repeat(12 * 1024) }), f.key.privateKey);
      expect(token.length).toBeGreaterThanOrEqual(16 * 1024);
      return token;
    },
  },
];

/** Authorization values that are not a bearer JWT at all. */
const garbage: { name: string; value: (f: Forge) => string | undefined }[] = [
  { name: 'Bearer not-a-jwt', value: () => 'Bearer not-a-jwt' },
  { name: 'Bearer of three junk segments', value: () => 'Bearer a.b.c' },
  { name: 'Basic credentials', value: () => `Basic ${Buffer.from('good:secret').toString('base64')}` },
  { name: 'empty', value: () => '' },
  { name: 'the scheme alone', value: () => 'Bearer' },
  { name: 'a good token with no scheme', value: (f) => f.goodToken },
  { name: 'a good token under the Join scheme', value: (f) => `Join ${f.goodToken}` },
  { name: 'a good token followed by junk', value: (f) => `Bearer ${f.goodToken} junk` },
  { name: 'a join token', value: () => 'Join alpha-00000000.c2VjcmV0' },
  { name: 'the admin token', value: (f) => `Bearer ${f.harness.adminToken}` },
  { name: 'no authorization header', value: () => undefined },
];

function metadataWith(value: string | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (value !== undefined) metadata.set('authorization', value);
  return metadata;
}

describe('bad agent tokens are refused and the server goes on serving', () => {
  let harness: Harness | undefined;
  let agentApi: AgentServiceClient;
  let forge: Forge;

  beforeEach(async () => {
    const captured = new Map<string, ReadOnlyCredentials>();
    const grab: AgentModule = (ctx) => {
      captured.set(ctx.agentId, ctx.credentials);
      return {};
    };
    harness = await Harness.start({ clockToleranceMs: TOLERANCE_MS });
    const { host, hostId } = await harness.startHost('alpha', { modules: new Map([['grab', grab]]) });
    await harness.dispatch(host, hostId, AGENT_ID, 'grab');
    const credentials = captured.get(AGENT_ID);
    if (credentials === undefined) throw new Error('the grab module was not started');
    agentApi = harness.agentClient();
    const jwks = jwksDocument(await call(harness.admin.getJwks.bind(harness.admin), {}));
    const jwksJson = JSON.stringify(jwks);
    const key = harness.cp.keys.active();
    const publicJwk = jwks.keys.find((k) => k.kid === key.kid);
    if (publicJwk === undefined) throw new Error('the active key is not in the JWKS');
    const goodToken = credentials.get();
    forge = { harness, hostId, goodToken, good: partsOf(goodToken), key, publicJwk, jwksJson };
    await expectServing();
  });

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  function whoAmI(metadata: grpc.Metadata): Promise<grpc.status | 'ok'> {
    return statusOf(call(agentApi.whoAmI.bind(agentApi), {}, metadata));
  }

  function heartbeat(metadata: grpc.Metadata): Promise<grpc.status | 'ok'> {
    return statusOf(call(agentApi.heartbeat.bind(agentApi), { agentId: AGENT_ID }, metadata));
  }

  /** The good agent's own token is accepted (and names it). */
  async function expectServing(): Promise<void> {
    const who = await call(agentApi.whoAmI.bind(agentApi), {}, bearer(forge.goodToken));
    expect(who.agentId).toBe(AGENT_ID);
    expect(await heartbeat(bearer(forge.goodToken))).toBe('ok');
  }

  /** Both AgentService methods refuse `metadata`; the cache gains nothing from it; the good agent is served after. */
  async function expectRefusedThenServing(metadata: grpc.Metadata): Promise<void> {
    const cached = harness?.cp.verifierCacheEntries;
    expect(await whoAmI(metadata)).toBe(UNAUTHENTICATED);
    expect(await heartbeat(metadata)).toBe(UNAUTHENTICATED);
    // A refused token never enters the cache (an expired one already there is dropped).
    expect(harness?.cp.verifierCacheEntries).toBeLessThanOrEqual(cached ?? 0);
    await expectServing();
  }

  // Guards the table: the forging helpers make tokens the server accepts when
  // nothing is wrong, so each refusal below is down to the one thing changed.
  it('control: tokens forged the same way with nothing wrong are accepted', async () => {
    const resigned = await signEdDsa(forge.good.header, claims(forge), forge.key.privateKey);
    expect(await whoAmI(bearer(resigned))).toBe('ok');
    expect(await heartbeat(bearer(resigned))).toBe('ok');
    const issued = await forge.harness.cp.issuer.issue({ kind: 'agent', ...agentFields(forge), ttlMs: 3_600_000 });
    expect(await whoAmI(bearer(issued.token))).toBe('ok');
    expect(await heartbeat(bearer(issued.token))).toBe('ok');
  });

  it.each(forged)('refuses $name', async ({ token }) => {
    await expectRefusedThenServing(bearer(await token(forge)));
  });

  it.each(garbage)('refuses authorization: $name', async ({ value }) => {
    await expectRefusedThenServing(metadataWith(value(forge)));
  });

  it('refuses an expired token once past exp plus the clock tolerance, cached or not', async () => {
    const h = forge.harness;
    const issue = (): Promise<IssuedToken> => h.cp.issuer.issue({ kind: 'agent', ...agentFields(forge), ttlMs: 60_000 });
    const { token: seen, claims: seenClaims } = await issue();
    const { token: unseen, claims: unseenClaims } = await issue();
    const expiresAtMs = Math.max(seenClaims.expiresAtMs, unseenClaims.expiresAtMs);
    // `seen` is verified now, so the cache answers for it later; `unseen` goes through the signature path.
    expect(await whoAmI(bearer(seen))).toBe('ok');

    h.clock.advance(expiresAtMs - h.clock.now() + 1_000);
    // Past exp but within the skew tolerance: still accepted.
    expect(await whoAmI(bearer(seen))).toBe('ok');

    h.clock.advance(TOLERANCE_MS);
    expect(h.clock.now()).toBeGreaterThan(expiresAtMs + TOLERANCE_MS);
    await expectRefusedThenServing(bearer(seen));
    await expectRefusedThenServing(bearer(unseen));
  });

  it('answers a 100 KiB token with some error and keeps serving', async () => {
    const token = await signEdDsa(forge.good.header, claims(forge, { pad: 'x'.repeat(75 * 1024) }), forge.key.privateKey);
    expect(token.length).toBeGreaterThanOrEqual(100 * 1024);
    expect(await whoAmI(bearer(token))).not.toBe('ok');
    await expectServing();
    expect(await heartbeat(bearer(token))).not.toBe('ok');
    await expectServing();
  });

  // Two real keys, each token's kid naming the other: the kid picks the key the signature is checked
  // with, so a token signed by one real key under the other's kid must fail, both ways round.
  it('refuses a kid swapped between two real keys (after a signing-key rotation), both ways round', async () => {
    const h = forge.harness;
    const previous = forge.key;
    // The standby is promotable once it has been published longer than the JWKS cache lifetime.
    h.clock.advance(JWKS_MAX_AGE_MS + 1);
    await call(h.admin.rotateSigningKey.bind(h.admin), {});
    const current = h.cp.keys.active();
    expect(current.kid).not.toBe(previous.kid);
    // Control: each key under its own kid is accepted (the old one still verifies during the overlap).
    expect(await whoAmI(bearer(await signEdDsa({ ...forge.good.header, kid: current.kid }, claims(forge), current.privateKey)))).toBe('ok');
    expect(await whoAmI(bearer(await signEdDsa({ ...forge.good.header, kid: previous.kid }, claims(forge), previous.privateKey)))).toBe('ok');
    await expectRefusedThenServing(bearer(await signEdDsa({ ...forge.good.header, kid: previous.kid }, claims(forge), current.privateKey)));
    await expectRefusedThenServing(bearer(await signEdDsa({ ...forge.good.header, kid: current.kid }, claims(forge), previous.privateKey)));
  });

  it('refuses every bad token in turn on one server, serving the good agent between each', async () => {
    for (const bad of forged) {
      await expectRefusedThenServing(bearer(await bad.token(forge)));
    }
    for (const bad of garbage) {
      await expectRefusedThenServing(metadataWith(bad.value(forge)));
    }
  });
});

/** Bad host tokens on HostService.Connect: each refused at the door, none accepted, the real host untouched. */
describe('bad host tokens on Connect', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('refuses each as UNAUTHENTICATED (and never for good), while the real host stays connected', async () => {
    harness = await Harness.start({ clockToleranceMs: TOLERANCE_MS });
    const h = harness;
    const store = new MemoryHostCredentialStore();
    const { host, hostId } = await h.startHost('real', { credentialStore: store });
    const other = await call(h.admin.enrollHost.bind(h.admin), { name: 'other', joinTtlMs: 0 });
    const stored = await store.load();
    if (stored === undefined) throw new Error('the real host stored no credential');
    const hostToken = stored.token;
    const good = partsOf(hostToken);
    const key = h.cp.keys.active();
    const jwks = jwksDocument(await call(h.admin.getJwks.bind(h.admin), {}));
    const jwksJson = JSON.stringify(jwks);
    const publicJwk = jwks.keys.find((k) => k.kid === key.kid);
    if (publicJwk === undefined) throw new Error('the active key is not in the JWKS');
    const fresh = (change: JWTPayload = {}): JWTPayload => ({ ...good.payload, jti: randomUUID(), ...change });
    const disconnects: number[] = [];
    host.events.on('disconnected', (e) => disconnects.push(e.code));

    // Control: the real token, and one re-signed with nothing wrong, are accepted (INVALID_ARGUMENT: Ping before Hello).
    expect((await probeHostConnect(h.target, bearer(hostToken))).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((await probeHostConnect(h.target, bearer(await signEdDsa(good.header, fresh(), key.privateKey)))).code).toBe(grpc.status.INVALID_ARGUMENT);

    const bad: { name: string; token: () => Promise<string> | string; refusal?: string }[] = [
      { name: 'alg none', token: () => unsecuredJwt(good.header, fresh()) },
      { name: 'HS256 keyed with the public JWK x', token: () => hs256Jwt(good.header, fresh(), Buffer.from(publicJwk.x ?? '', 'base64url')) },
      { name: 'HS256 keyed with the JWKS document', token: () => hs256Jwt(good.header, fresh(), jwksJson) },
      {
        name: 'unknown kid',
        token: async () => signEdDsa({ ...good.header, kid: randomUUID() }, fresh(), (await generateKeyPair('EdDSA', { crv: 'Ed25519' })).privateKey),
      },
      { name: 'the real kid, another key', token: async () => signEdDsa(good.header, fresh(), (await generateKeyPair('EdDSA', { crv: 'Ed25519' })).privateKey) },
      { name: 'payload tampered: sub names another host', token: () => withPayload(hostToken, { ...good.payload, sub: other.hostId }) },
      { name: 'payload tampered: gen raised', token: () => withPayload(hostToken, { ...good.payload, gen: Number(good.payload.gen) + 5 }) },
      { name: 'typ of an agent token (real key)', token: () => signEdDsa({ ...good.header, typ: 'tether-agent+jwt' }, fresh({ host: hostId }), key.privateKey) },
      { name: 'wrong aud (real key)', token: () => signEdDsa(good.header, fresh({ aud: 'https://other.example' }), key.privateKey) },
      { name: 'wrong iss (real key)', token: () => signEdDsa(good.header, fresh({ iss: 'not-tether' }), key.privateKey) },
      { name: 'no exp (real key)', token: () => signEdDsa(good.header, without(fresh(), 'exp'), key.privateKey) },
      { name: 'nbf an hour ahead (real key)', token: () => signEdDsa(good.header, fresh({ nbf: Number(good.payload.iat) + 3_600 }), key.privateKey) },
      // Signed with the real key, so no forgery: what a host holds when the store lost the commit of its
      // rotation. That is final (nothing retrying can mend), named `generation-ahead`.
      { name: 'a generation never issued (real key)', token: () => signEdDsa(good.header, fresh({ gen: Number(good.payload.gen) + 1 }), key.privateKey), refusal: 'generation-ahead' },
      { name: '16 KiB (real key)', token: () => signEdDsa(good.header, fresh({ pad: 'x'.repeat(12 * 1024) }), key.privateKey) },
    ];
    for (const { name, token, refusal } of bad) {
      const status = await probeHostConnect(h.target, bearer(await token()));
      expect(status.code, name).toBe(grpc.status.UNAUTHENTICATED);
      // Never a final refusal for a forgery (it would tell a stale host to give up; here it only reaches the forger).
      expect(status.metadata.get('tether-refusal'), name).toEqual(refusal === undefined ? [] : [refusal]);
    }
    expect(disconnects).toEqual([]);
    expect(host.state).toBe('connected');
    expect(h.cp.connectedHosts).toBe(1);
  });
});
