/**
 * Host enrollment: a join token yields one live host. The "host" here is a raw
 * stream, so the test decides whether and when the credential is acknowledged;
 * the real host always acknowledges at once.
 */
import * as grpc from '@grpc/grpc-js';
import { decodeJwt } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import type { Credential } from '../../gen/tether/v1/common.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { bearer, call, Harness } from '../support/harness.js';
import { probeHostConnect } from '../support/host-stream-probe.js';
import { helloEnvelope, RawHostStream } from '../support/raw-host-stream.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const JOIN_TTL_MS = 60_000;

describe('host enrollment', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;
  const streams: RawHostStream[] = [];

  afterEach(async () => {
    for (const stream of streams.splice(0)) stream.close();
    await proxy?.close();
    proxy = undefined;
    await harness?.close();
    harness = undefined;
  });

  function need<T>(value: T | undefined, what: string): T {
    if (value === undefined) throw new Error(`no ${what}`);
    return value;
  }

  /** A raw stream to `target` (closed in afterEach). */
  function open(target: string, authorization: string): RawHostStream {
    const stream = RawHostStream.open(target, authorization);
    streams.push(stream);
    return stream;
  }

  async function enroll(h: Harness, name: string): Promise<{ hostId: string; joinToken: string }> {
    const enrolled = await call(h.admin.enrollHost.bind(h.admin), { name, joinTtlMs: 0 });
    return { hostId: enrolled.hostId, joinToken: enrolled.joinToken };
  }

  async function hostState(h: Harness, hostId: string): Promise<string | undefined> {
    const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: 0, pageToken: '' });
    return listed.hosts.find((host) => host.hostId === hostId)?.state;
  }

  /** Joins over a raw stream and resolves with the credential the Welcome carried (not acknowledged). */
  async function joinWithoutAck(stream: RawHostStream): Promise<Credential> {
    stream.send(helloEnvelope());
    const welcome = await stream.next((m) => m.welcome !== undefined, 'Welcome');
    return need(welcome.welcome?.hostCredential, 'host credential in the Welcome');
  }

  /** How the control plane treats a host token: 'accepted' (authenticated; the probe is then refused for skipping Hello) or the refusal. */
  async function verdict(h: Harness, token: string): Promise<'accepted' | { code: grpc.status; refusal: string | undefined }> {
    const status = await probeHostConnect(h.target, bearer(token));
    if (status.code === grpc.status.INVALID_ARGUMENT) return 'accepted';
    const refusal = status.metadata.get('tether-refusal')[0];
    return { code: status.code, refusal: typeof refusal === 'string' ? refusal : undefined };
  }

  it('leases a join token to one stream; a retry after a cut gets a new credential and revokes the first; once acknowledged it is burnt for good', async () => {
    harness = await Harness.start({ joinTokenTtlMs: JOIN_TTL_MS });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const { hostId, joinToken } = await enroll(h, 'joiner');

    // First attempt, through the proxy: credential 1 arrives, and the test never acknowledges it.
    const first = open(proxy.target, `Join ${joinToken}`);
    const firstCredential = await joinWithoutAck(first);
    expect(decodeJwt(firstCredential.token).sub).toBe(hostId);

    // While the first stream holds the lease, the same join token is refused, and not for good: that host may retry.
    const second = open(h.target, `Join ${joinToken}`);
    second.send(helloEnvelope());
    const secondEnd = await second.ended;
    expect(secondEnd.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(secondEnd.refusal).toBeUndefined();
    expect(second.received.some((m) => m.welcome !== undefined)).toBe(false);

    // The first stream is cut before its Ack; once the control plane sees it gone, a retry leases the token again.
    const firstGone = nextEvent<{ hostId: string }>(h.cp.events, 'host-disconnected', (e) => e.hostId === hostId);
    proxy.cutAll();
    expect((await first.ended).code).toBe(grpc.status.UNAVAILABLE);
    await firstGone;
    const retry = open(h.target, `Join ${joinToken}`);
    const retryCredential = await joinWithoutAck(retry);
    expect(retryCredential.generation).toBeGreaterThan(firstCredential.generation);
    expect(retryCredential.tokenId).not.toBe(firstCredential.tokenId);

    // One join token, one live host: the unacknowledged first credential is refused; the new one is accepted.
    expect(await verdict(h, firstCredential.token)).toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    expect(await verdict(h, retryCredential.token)).toBe('accepted');
    expect(await hostState(h, hostId)).toBe('enrolled');

    // The Ack burns the join token.
    retry.send({ ack: { agentId: '', generation: retryCredential.generation, ok: true, error: '', incarnation: 0 } });
    await waitUntil(async () => (await hostState(h, hostId)) === 'active', 'the host to turn active on its Ack');

    // From now on the join token is refused for good: a host holding only it must stop retrying.
    const late = open(h.target, `Join ${joinToken}`);
    late.send(helloEnvelope());
    expect(await late.ended).toMatchObject({ code: grpc.status.UNAUTHENTICATED, refusal: 'revoked' });
    expect(late.received.some((m) => m.welcome !== undefined)).toBe(false);

    // The burnt token changed nothing for the credential that was acknowledged, nor for the one that was not.
    expect(await verdict(h, retryCredential.token)).toBe('accepted');
    expect(await verdict(h, firstCredential.token)).toMatchObject({ code: grpc.status.UNAUTHENTICATED });
  });

  it('burns nothing when the host could not store its credential (a NACK): the join can be retried', async () => {
    harness = await Harness.start({ joinTokenTtlMs: JOIN_TTL_MS });
    const h = harness;
    const { hostId, joinToken } = await enroll(h, 'diskfull');
    const first = open(h.target, `Join ${joinToken}`);
    const credential = await joinWithoutAck(first);
    first.send({ ack: { agentId: '', generation: credential.generation, ok: false, error: 'disk full', incarnation: 0 } });
    // Envelopes of one stream are handled in order: the Pong means the NACK was.
    first.send({ ping: { timeMs: 42 } });
    await first.next((m) => m.pong?.pingTimeMs === 42, 'Pong');
    expect(await hostState(h, hostId)).toBe('enrolled');

    const gone = nextEvent<{ hostId: string }>(h.cp.events, 'host-disconnected', (e) => e.hostId === hostId);
    first.close();
    await gone;
    const retry = open(h.target, `Join ${joinToken}`);
    const second = await joinWithoutAck(retry);
    expect(second.generation).toBeGreaterThan(credential.generation);
    retry.send({ ack: { agentId: '', generation: second.generation, ok: true, error: '', incarnation: 0 } });
    await waitUntil(async () => (await hostState(h, hostId)) === 'active', 'the host to turn active on its Ack');
  });

  it('refuses for good a join token past its TTL', async () => {
    harness = await Harness.start({ joinTokenTtlMs: JOIN_TTL_MS });
    const h = harness;
    const { hostId, joinToken } = await enroll(h, 'late');
    h.clock.advance(JOIN_TTL_MS);

    const stream = open(h.target, `Join ${joinToken}`);
    stream.send(helloEnvelope());
    expect(await stream.ended).toMatchObject({ code: grpc.status.UNAUTHENTICATED, refusal: 'expired' });
    expect(stream.received).toEqual([]);
    expect(await hostState(h, hostId)).toBe('enrolled');
    // Counted as an auth failure, with a fixed word for why.
    expect(await h.cp.metrics.metrics()).toMatch(/^tether_auth_failures_total\{principal="host",reason="join-expired"\} 1$/m);
  });

  it('refuses a join token whose ID names another host, or no host, without spending either host\'s token', async () => {
    harness = await Harness.start({ joinTokenTtlMs: JOIN_TTL_MS });
    const h = harness;
    const x = await enroll(h, 'x');
    const y = await enroll(h, 'y');
    const secretOfX = x.joinToken.slice(x.joinToken.indexOf('.') + 1);

    // X's secret under Y's ID: the secret does not match Y's hash, and it is no way into X either.
    const crossed = open(h.target, `Join ${y.hostId}.${secretOfX}`);
    crossed.send(helloEnvelope());
    const crossedEnd = await crossed.ended;
    expect(crossedEnd.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(crossedEnd.refusal).toBeDefined();
    expect(crossed.received).toEqual([]);

    const unknown = open(h.target, `Join nobody-00000000.${secretOfX}`);
    unknown.send(helloEnvelope());
    expect(await unknown.ended).toMatchObject({ code: grpc.status.UNAUTHENTICATED, refusal: 'unknown-host' });
    expect(await h.cp.metrics.metrics()).toMatch(/^tether_auth_failures_total\{principal="host",reason="join-unknown-host"\} 1$/m);

    // Neither failed attempt leased or burnt a token: both hosts still join with their own, as themselves.
    for (const host of [y, x]) {
      const stream = open(h.target, `Join ${host.joinToken}`);
      const credential = await joinWithoutAck(stream);
      expect(decodeJwt(credential.token).sub).toBe(host.hostId);
      stream.send({ ack: { agentId: '', generation: credential.generation, ok: true, error: '', incarnation: 0 } });
      await waitUntil(async () => (await hostState(h, host.hostId)) === 'active', `${host.hostId} to turn active`);
    }
  });
});
