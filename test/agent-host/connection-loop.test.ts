/**
 * The host's connection loop on fakes of its own callbacks and the fake
 * clock: one channel per attempt, closed before the next is opened; the
 * announced delay is the one slept; the attempt count restarts after a
 * welcomed stream; a refusal ends the loop; so does the signal.
 */
import type * as grpc from '@grpc/grpc-js';
import { Metadata, status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { runConnectionLoop, streamOutcomeOf, type RetryPlan, type StreamOutcome } from '../../agent-host/connection-loop.js';
import { DEFAULT_RECONNECT_BACKOFF, reconnectCapMs } from '../../agent-host/reconnect-backoff.js';
import { REFUSAL_METADATA_KEY, RETRY_AFTER_METADATA_KEY } from '../../common/protocol.js';
import { FakeClock } from '../support/fake-clock.js';
import { waitUntil } from '../support/wait.js';

/** The part of a grpc-js Channel the loop uses: `close()`. */
class FakeChannel {
  isClosed = false;
  close(): void {
    this.isClosed = true;
  }
}

const lost = (isWelcomed = false): StreamOutcome => ({ isWelcomed, code: status.UNAVAILABLE, details: 'gone', refusal: undefined });
/** A Hello the control plane deferred: RESOURCE_EXHAUSTED with a retry-after. */
const deferred = (retryAfterMs: number): StreamOutcome => ({ isWelcomed: false, code: status.RESOURCE_EXHAUSTED, details: 'busy', refusal: undefined, retryAfterMs });

/** Runs the loop over `outcomes` (one per attempt), stopping it once they are used up. */
async function runOver(outcomes: StreamOutcome[], options: { lowestMs?: number; random?: () => number; addresses?: string[] } = {}) {
  const clock = new FakeClock();
  const stop = new AbortController();
  const channels: FakeChannel[] = [];
  const losses: { retryInMs: number; atMs: number; plan: RetryPlan }[] = [];
  const openWhileOthersOpen: number[] = [];
  const attemptedAddresses: string[] = [];
  let next = 0;
  const done = runConnectionLoop({
    clock,
    signal: stop.signal,
    random: options.random ?? (() => 0.999),
    backoff: DEFAULT_RECONNECT_BACKOFF,
    addresses: options.addresses ?? ['127.0.0.1:7443'],
    openChannel: (address) => {
      attemptedAddresses.push(address);
      const open = channels.filter((c) => !c.isClosed).length;
      if (open > 0) openWhileOthersOpen.push(open);
      const channel = new FakeChannel();
      channels.push(channel);
      return channel as unknown as grpc.Channel;
    },
    runStream: (channel) => {
      expect((channel as unknown as FakeChannel).isClosed).toBe(false);
      const outcome = outcomes[next++];
      if (outcome === undefined) {
        stop.abort();
        return Promise.resolve(lost());
      }
      return Promise.resolve(outcome);
    },
    lowestTimeToExpiryMs: () => options.lowestMs ?? Infinity,
    onLost: (_outcome, retryInMs, plan) => losses.push({ retryInMs, atMs: clock.now(), plan }),
  });
  // Each wait is moved past as it begins; the loop ends once the outcomes are used up.
  let isDone = false;
  const tracked = done.then(
    (value) => {
      isDone = true;
      return value;
    },
    (err: unknown) => {
      isDone = true;
      throw err;
    },
  );
  for (let i = 0; i < 1_000 && !isDone; i++) {
    await waitUntil(() => clock.pendingTimers > 0 || isDone, 'the loop to wait or end');
    if (clock.pendingTimers > 0) clock.advance(losses.at(-1)?.retryInMs ?? 0);
  }
  return { result: await tracked, channels, losses, openWhileOthersOpen, attempts: next, attemptedAddresses };
}

describe('runConnectionLoop', () => {
  it('opens one channel per attempt and closes each before the next', async () => {
    const { channels, losses, openWhileOthersOpen, attempts } = await runOver([lost(), lost(), lost(), lost()]);
    expect(attempts).toBe(5);
    expect(channels).toHaveLength(5);
    expect(channels.every((c) => c.isClosed)).toBe(true);
    expect(openWhileOthersOpen).toEqual([]);
    expect(losses).toHaveLength(4);
  });

  it('waits the delay it announces, growing with each failed attempt and restarting after a welcomed stream', async () => {
    // A draw just under 1 puts each delay just under its cap.
    const { losses } = await runOver([lost(), lost(), lost(), lost(true), lost()]);
    const caps = [0, 1, 2, 0, 1].map((attempt) => reconnectCapMs(attempt, Infinity));
    expect(losses.map((l) => l.retryInMs)).toEqual(caps.map((cap) => Math.floor(0.999 * cap)));
    // Each attempt came exactly its announced delay after the loss before it.
    for (let i = 1; i < losses.length; i++) expect(losses[i]?.atMs).toBe((losses[i - 1]?.atMs ?? 0) + (losses[i - 1]?.retryInMs ?? 0));
  });

  it('bounds every delay by a tenth of the lowest remaining token life', async () => {
    const { losses } = await runOver(Array.from({ length: 12 }, () => lost()), { lowestMs: 4_000 });
    expect(losses.length).toBe(12);
    for (const { retryInMs } of losses) expect(retryInMs).toBeLessThanOrEqual(400);
  });

  it('honours a retry-after: waits at least that long (jittered up to half as much again), without growing the backoff or stopping', async () => {
    const { result, losses } = await runOver([lost(), deferred(2_000), deferred(2_000), lost()]);
    expect(result).toBeUndefined();
    expect(losses.map((l) => l.retryInMs)).toEqual([
      Math.floor(0.999 * reconnectCapMs(0, Infinity)),
      Math.floor(2_000 * (1 + 0.5 * 0.999)),
      Math.floor(2_000 * (1 + 0.5 * 0.999)),
      // The deferrals did not count as failed attempts: the backoff goes on from where the loss left it.
      Math.floor(0.999 * reconnectCapMs(1, Infinity)),
    ]);
    expect(losses.map((l) => l.plan.attempt)).toEqual([1, 1, 1, 2]);
    expect(losses.map((l) => l.plan.retryAfterMs)).toEqual([undefined, 2_000, 2_000, undefined]);
    for (let i = 1; i < losses.length; i++) expect(losses[i]?.atMs).toBe((losses[i - 1]?.atMs ?? 0) + (losses[i - 1]?.retryInMs ?? 0));
  });

  it('bounds a retry-after by a tenth of the lowest remaining token life, like any delay', async () => {
    const { losses } = await runOver([deferred(60_000), deferred(60_000)], { lowestMs: 4_000 });
    expect(losses.map((l) => l.retryInMs)).toEqual([400, 400]);
    expect(losses.every((l) => l.plan.capMs === 400)).toBe(true);
  });

  it('with several addresses, tries each untried one at once and backs off only once all have failed', async () => {
    const addresses = ['a:1', 'b:2', 'c:3'];
    const { losses, attemptedAddresses } = await runOver([lost(), lost(), lost(), lost(), lost(), lost(), lost(true), lost(), lost()], { addresses });
    // Rounds of three: no wait inside a round; the backoff (still growing per round) after each full round.
    const caps = [0, 1].map((attempt) => Math.floor(0.999 * reconnectCapMs(attempt, Infinity)));
    expect(losses.map((l) => l.retryInMs)).toEqual([0, 0, caps[0], 0, 0, caps[1], 0, 0, caps[0]]);
    expect(losses.map((l) => l.plan.attempt)).toEqual([0, 0, 1, 1, 1, 2, 0, 0, 1]);
    // Every round tries every address once, in one order (shuffled once).
    const order = attemptedAddresses.slice(0, 3);
    expect([...order].sort()).toEqual(addresses);
    expect(attemptedAddresses.slice(3, 6)).toEqual(order);
    // After the welcomed stream on the 7th attempt is lost, the next two addresses are tried at once, then the backoff starts over.
    expect(attemptedAddresses.slice(6, 9)).toEqual(order);
    for (const [i, loss] of losses.entries()) expect(loss.plan.nextAddress).toBe(attemptedAddresses[i + 1]);
  });

  it('with several addresses, still bounds the backoff by a tenth of the lowest remaining token life', async () => {
    const { losses } = await runOver(Array.from({ length: 12 }, () => lost()), { lowestMs: 4_000, addresses: ['a:1', 'b:2'] });
    expect(losses.filter((l) => l.retryInMs > 0).length).toBeGreaterThan(0);
    for (const { retryInMs, plan } of losses) {
      expect(retryInMs).toBeLessThanOrEqual(400);
      expect(plan.capMs).toBeLessThanOrEqual(400);
    }
  });

  it('ends with the outcome of a final refusal, opening nothing more', async () => {
    const refusal: StreamOutcome = { isWelcomed: false, code: status.UNAUTHENTICATED, details: 'revoked', refusal: 'revoked' };
    const { result, channels, attempts } = await runOver([lost(), refusal, lost()]);
    expect(result).toEqual(refusal);
    expect(attempts).toBe(2);
    expect(channels.every((c) => c.isClosed)).toBe(true);
  });

  it('treats a stream that throws (a disk hiccup reading the credential) as lost, and closes its channel', async () => {
    const clock = new FakeClock();
    const stop = new AbortController();
    const channels: FakeChannel[] = [];
    let calls = 0;
    const losses: StreamOutcome[] = [];
    const done = runConnectionLoop({
      clock,
      signal: stop.signal,
      random: () => 0,
      backoff: DEFAULT_RECONNECT_BACKOFF,
      addresses: ['127.0.0.1:7443'],
      openChannel: () => {
        const channel = new FakeChannel();
        channels.push(channel);
        return channel as unknown as grpc.Channel;
      },
      runStream: () => {
        calls++;
        if (calls === 1) return Promise.reject(new Error('EIO: reading the host credential'));
        stop.abort();
        return Promise.resolve(lost());
      },
      lowestTimeToExpiryMs: () => Infinity,
      onLost: (outcome) => losses.push(outcome),
    });
    await waitUntil(() => calls === 2 || clock.pendingTimers > 0, 'a retry after the failure');
    clock.advance(0);
    expect(await done).toBeUndefined();
    expect(losses.map((l) => l.code)).toEqual([status.UNKNOWN]);
    expect(channels.every((c) => c.isClosed)).toBe(true);
  });
});

describe('streamOutcomeOf', () => {
  const statusWith = (code: status, entries: Record<string, string>): grpc.StatusObject => {
    const metadata = new Metadata();
    for (const [key, value] of Object.entries(entries)) metadata.set(key, value);
    return { code, details: 'd', metadata };
  };

  it('reads a retry-after only from RESOURCE_EXHAUSTED, and never as a refusal', () => {
    expect(streamOutcomeOf(statusWith(status.RESOURCE_EXHAUSTED, { [RETRY_AFTER_METADATA_KEY]: '1500' }), false)).toEqual({
      isWelcomed: false,
      code: status.RESOURCE_EXHAUSTED,
      details: 'd',
      refusal: undefined,
      retryAfterMs: 1_500,
    });
    expect(streamOutcomeOf(statusWith(status.UNAVAILABLE, { [RETRY_AFTER_METADATA_KEY]: '1500' }), false).retryAfterMs).toBeUndefined();
    expect(streamOutcomeOf(statusWith(status.RESOURCE_EXHAUSTED, { [RETRY_AFTER_METADATA_KEY]: '-1' }), false).retryAfterMs).toBeUndefined();
    expect(streamOutcomeOf(statusWith(status.RESOURCE_EXHAUSTED, { [RETRY_AFTER_METADATA_KEY]: 'soon' }), false).retryAfterMs).toBeUndefined();
    expect(streamOutcomeOf(statusWith(status.RESOURCE_EXHAUSTED, {}), false).retryAfterMs).toBeUndefined();
  });

  it('reads a final refusal from any status but OK', () => {
    expect(streamOutcomeOf(statusWith(status.UNAUTHENTICATED, { [REFUSAL_METADATA_KEY]: 'revoked' }), false).refusal).toBe('revoked');
    expect(streamOutcomeOf(statusWith(status.OK, { [REFUSAL_METADATA_KEY]: 'revoked' }), true).refusal).toBeUndefined();
    expect(streamOutcomeOf(statusWith(status.UNAUTHENTICATED, { [REFUSAL_METADATA_KEY]: 'bogus' }), false).refusal).toBeUndefined();
  });
});
