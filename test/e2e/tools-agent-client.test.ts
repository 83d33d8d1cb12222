/**
 * AgentClient's one retry: on UNAUTHENTICATED it reads its source again and
 * retries exactly once. A source that hands out a token refused by the control
 * plane (here: expired) and then the current one succeeds after one retry; a
 * source that keeps failing surfaces UnauthenticatedError after two attempts,
 * never a loop. Attempts are counted at the source (the library reads it once
 * per attempt) and successes at the control plane (its heartbeat events).
 */
import { getEventListeners } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { AgentClient } from '../../agent-host/tools/agent-client.js';
import type { CredentialSource, ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { PermissionDeniedError, TokenRevokedError, UnauthenticatedError } from '../../common/errors.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { nextEvent } from '../support/wait.js';

const AGENT_ID = 'retry-1';

/** A source of our own: answers from `answers` in turn (the last one repeats), counting reads. */
function scriptedSource(answers: (() => string)[]): CredentialSource & { gets: number } {
  const source = {
    gets: 0,
    get(): string {
      const answer = answers[Math.min(source.gets, answers.length - 1)];
      source.gets++;
      if (answer === undefined) throw new Error('no answers');
      return answer();
    },
  };
  return source;
}

describe('AgentClient retry on UNAUTHENTICATED', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  /**
   * An agent whose first token has expired while its second is valid: token 1
   * issued at t0 (expires t0+60 s), token 2 forced at t0+40 s (expires
   * t0+100 s), clock at t0+65 s; no clock tolerance, no automatic rotation,
   * and host heartbeats far apart so only this test's calls reach the control plane.
   */
  async function agentWithExpiredFirstToken(): Promise<{ h: Harness; credentials: ReadOnlyCredentials; expiredToken: string }> {
    const h = await Harness.start({ agentTokenTtlMs: 60_000, clockToleranceMs: 0, isRotationEnabled: false, heartbeatIntervalMs: 3_600_000 });
    harness = h;
    const { host, hostId } = await h.startHost('retry-host');
    const started = nextEvent<{ agentId: string; credentials: ReadOnlyCredentials }>(host.events, 'agent-started', (e) => e.agentId === AGENT_ID);
    await h.dispatch(host, hostId, AGENT_ID);
    const { credentials } = await started;
    const expiredToken = credentials.get();
    h.clock.advance(40_000);
    const applied = nextEvent<{ agentId: string; generation: number }>(host.events, 'rotation-applied', (e) => e.agentId === AGENT_ID && e.generation === 2);
    await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: AGENT_ID });
    await applied;
    h.clock.advance(25_000);
    // The first token really is refused now, and the current one accepted.
    const raw = h.agentClient();
    expect(await statusOf(call(raw.whoAmI.bind(raw), {}, bearer(expiredToken)))).toBe(grpc.status.UNAUTHENTICATED);
    expect(await statusOf(call(raw.whoAmI.bind(raw), {}, bearer(credentials.get())))).toBe('ok');
    return { h, credentials, expiredToken };
  }

  /** Counts heartbeats the control plane accepted for {@link AGENT_ID}. */
  function countBeats(h: Harness): { count: number } {
    const counter = { count: 0 };
    const onBeat = (e: { agentId: string }): void => {
      if (e.agentId === AGENT_ID) counter.count++;
    };
    h.cp.events.on('heartbeat', onBeat);
    onTestFinished(() => {
      h.cp.events.off('heartbeat', onBeat);
    });
    return counter;
  }

  it('succeeds after exactly one retry when a rotation raced the call', async () => {
    const { h, credentials, expiredToken } = await agentWithExpiredFirstToken();
    const source = scriptedSource([() => expiredToken, () => credentials.get()]);
    const client = new AgentClient({ target: h.target, source });
    onTestFinished(() => client.close());
    const beats = countBeats(h);
    const response = await client.heartbeat(AGENT_ID);
    expect(response.serverTimeMs).toBe(h.clock.now());
    expect(source.gets).toBe(2);
    expect(beats.count).toBe(1);
    expect((await client.whoAmI()).generation).toBe(2);
    expect(source.gets).toBe(3);
  });

  it('surfaces UnauthenticatedError after two attempts when the source keeps handing out a refused token', async () => {
    const { h, expiredToken } = await agentWithExpiredFirstToken();
    const source = scriptedSource([() => expiredToken]);
    const client = new AgentClient({ target: h.target, source });
    onTestFinished(() => client.close());
    const beats = countBeats(h);
    const failure = await client.heartbeat(AGENT_ID).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(failure).toBeInstanceOf(UnauthenticatedError);
    expect((failure as Error).message).not.toContain(expiredToken);
    expect(source.gets).toBe(2);
    expect(beats.count).toBe(0);
  });

  it('surfaces UnauthenticatedError after two attempts, sending nothing, when the source has no token', async () => {
    const { h } = await agentWithExpiredFirstToken();
    const source = scriptedSource([
      () => {
        throw new TokenRevokedError('credential revoked');
      },
    ]);
    const client = new AgentClient({ target: h.target, source });
    onTestFinished(() => client.close());
    const beats = countBeats(h);
    await expect(client.heartbeat(AGENT_ID)).rejects.toBeInstanceOf(UnauthenticatedError);
    expect(source.gets).toBe(2);
    expect(beats.count).toBe(0);
  });

  it('does not retry other refusals', async () => {
    const { h, credentials } = await agentWithExpiredFirstToken();
    const source = scriptedSource([() => credentials.get()]);
    const client = new AgentClient({ target: h.target, source });
    onTestFinished(() => client.close());
    await expect(client.heartbeat('someone-else')).rejects.toBeInstanceOf(PermissionDeniedError);
    expect(source.gets).toBe(1);
  });
});

describe('AgentClient cancellation', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  async function liveAgent(): Promise<{ h: Harness; credentials: ReadOnlyCredentials }> {
    const h = await Harness.start({ isRotationEnabled: false, heartbeatIntervalMs: 3_600_000 });
    harness = h;
    const { host, hostId } = await h.startHost('abort-host');
    const started = nextEvent<{ agentId: string; credentials: ReadOnlyCredentials }>(host.events, 'agent-started', (e) => e.agentId === AGENT_ID);
    await h.dispatch(host, hostId, AGENT_ID);
    const { credentials } = await started;
    return { h, credentials };
  }

  it('cancels a call whose signal aborts, refuses one whose signal already has, and leaves no listener behind', async () => {
    const { h, credentials } = await liveAgent();
    const client = new AgentClient({ target: h.target, source: credentials });
    onTestFinished(() => client.close());
    const done = new AbortController();
    expect((await client.whoAmI({ signal: done.signal })).agentId).toBe(AGENT_ID);
    expect(getEventListeners(done.signal, 'abort')).toHaveLength(0);

    const aborting = new AbortController();
    const cancelled = client.whoAmI({ signal: aborting.signal });
    expect(getEventListeners(aborting.signal, 'abort')).toHaveLength(1);
    aborting.abort();
    const failure = await cancelled.then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    expect(failure?.message).toContain('CANCELLED');

    await expect(client.whoAmI({ signal: aborting.signal })).rejects.toMatchObject({ name: 'AbortError' });
  });
});
