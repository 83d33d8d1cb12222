import { describe, expect, it } from 'vitest';
import {
  AudienceTokens,
  DEFAULT_AUDIENCE_REFRESH,
  isAudienceTokenStale,
  type AudienceTokenMinter,
} from '../../../agent-host/tools/audience-tokens.js';
import { ClosedError, InvalidArgumentError, UnavailableError } from '../../../common/errors.js';
import type { CallOptions } from '../../../agent-host/tools/agent-client.js';
import type { MintTokenResponse } from '../../../gen/tether/v1/agent.js';
import { FakeClock } from '../../support/fake-clock.js';

describe('isAudienceTokenStale', () => {
  const issuedAtMs = 1_000_000;
  // [life, left, stale?]: refresh when less than 20 % of life or 30 s is left, whichever comes first.
  const cases: [string, number, number, boolean][] = [
    ['5 min token, 61 s left', 300_000, 61_000, false],
    ['5 min token, exactly 60 s (20 %) left', 300_000, 60_000, false],
    ['5 min token, 59.999 s left', 300_000, 59_999, true],
    ['1 h token, 12 min left', 3_600_000, 720_001, false],
    ['1 h token, under 12 min left', 3_600_000, 719_999, true],
    ['1 min token, 30 s left (margin beats 20 %)', 60_000, 30_000, false],
    ['1 min token, under 30 s left', 60_000, 29_999, true],
    ['10 s token (capped by the agent token), fresh', 10_000, 10_000, true],
    ['expired', 300_000, 0, true],
    ['long expired', 300_000, -5_000, true],
  ];
  it.each(cases)('%s', (_name, lifeMs, leftMs, isStale) => {
    const expiresAtMs = issuedAtMs + lifeMs;
    expect(isAudienceTokenStale(expiresAtMs - leftMs, issuedAtMs, expiresAtMs)).toBe(isStale);
  });

  it('takes a policy', () => {
    const policy = { refreshFraction: 0.5, refreshMarginMs: 0 };
    expect(isAudienceTokenStale(1_050, 1_000, 1_100, policy)).toBe(false);
    expect(isAudienceTokenStale(1_051, 1_000, 1_100, policy)).toBe(true);
    expect(DEFAULT_AUDIENCE_REFRESH).toEqual({ refreshFraction: 0.2, refreshMarginMs: 30_000 });
  });
});

/** Resolves as `gate` does, or rejects with an AbortError once `signal` aborts, as a cancelled gRPC call does. */
function abortable(gate: Promise<void> | undefined, signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) return gate ?? Promise.resolve();
  if (signal.aborted) return Promise.reject(new DOMException('aborted', 'AbortError'));
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => reject(new DOMException('aborted', 'AbortError'));
    signal.addEventListener('abort', onAbort, { once: true });
    (gate ?? Promise.resolve()).then(
      () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      },
      reject,
    );
  });
}

/** A minter of our own interface: signs nothing, records what it was asked, fails on demand. */
class FakeMinter implements AudienceTokenMinter {
  readonly asked: string[] = [];
  readonly #clock: FakeClock;
  readonly #lifeMs: number;
  #failure: Error | undefined;
  #gate: Promise<void> | undefined;
  #open: (() => void) | undefined;

  constructor(clock: FakeClock, lifeMs = 300_000) {
    this.#clock = clock;
    this.#lifeMs = lifeMs;
  }

  failWith(err: Error | undefined): void {
    this.#failure = err;
  }

  /** Holds every mint until the returned function is called. */
  hold(): () => void {
    this.#gate = new Promise((resolve) => {
      this.#open = resolve;
    });
    return () => {
      this.#gate = undefined;
      this.#open?.();
    };
  }

  /** Signals the mints were given, in order (as AgentClient, a mint ends when its signal aborts). */
  readonly signals: (AbortSignal | undefined)[] = [];

  async mintToken(audience: string, options: CallOptions = {}): Promise<MintTokenResponse> {
    this.asked.push(audience);
    this.signals.push(options.signal);
    const n = this.asked.length;
    await abortable(this.#gate, options.signal);
    if (this.#failure !== undefined) throw this.#failure;
    const issuedAtMs = this.#clock.now();
    return {
      token: `token-${n}`,
      audience,
      issuedAtMs,
      expiresAtMs: issuedAtMs + this.#lifeMs,
      generation: 7,
      keyId: 'kid-1',
      tokenId: `jti-${n}`,
    };
  }
}

describe('AudienceTokens', () => {
  it('caches per audience and mints again only once the token is due for refresh', async () => {
    const clock = new FakeClock();
    const minter = new FakeMinter(clock);
    const tokens = new AudienceTokens({ client: minter, clock });
    const first = await tokens.tokenFor('svc-a');
    expect(first).toMatchObject({ token: 'token-1', audience: 'svc-a', generation: 7, tokenId: 'jti-1', expiresAtMs: clock.now() + 300_000 });
    expect(Object.isFrozen(first)).toBe(true);
    expect(await tokens.tokenFor('svc-a')).toBe(first);
    expect((await tokens.tokenFor('svc-b')).tokenId).toBe('jti-2');
    expect(minter.asked).toEqual(['svc-a', 'svc-b']);
    clock.advance(240_000);
    expect(await tokens.tokenFor('svc-a')).toBe(first);
    clock.advance(1);
    expect((await tokens.tokenFor('svc-a')).tokenId).toBe('jti-3');
    expect(minter.asked).toEqual(['svc-a', 'svc-b', 'svc-a']);
    expect(tokens.describe('svc-a')).toEqual({ audience: 'svc-a', issuedAtMs: clock.now(), expiresAtMs: clock.now() + 300_000, generation: 7, keyId: 'kid-1', tokenId: 'jti-3' });
    expect(tokens.describe('svc-a')).not.toHaveProperty('token');
    expect(tokens.describe('never')).toBeUndefined();
  });

  it('shares one mint between concurrent requests for one audience', async () => {
    const clock = new FakeClock();
    const minter = new FakeMinter(clock);
    const tokens = new AudienceTokens({ client: minter, clock });
    const release = minter.hold();
    const all = Promise.all([tokens.tokenFor('svc-a'), tokens.tokenFor('svc-a'), tokens.source('svc-a').get()]);
    release();
    const [a, b, c] = await all;
    expect(a).toBe(b);
    expect(c).toBe(a.token);
    expect(minter.asked).toEqual(['svc-a']);
  });

  it('lets one caller of a shared mint give up without cancelling it for the others', async () => {
    const clock = new FakeClock();
    const minter = new FakeMinter(clock);
    const tokens = new AudienceTokens({ client: minter, clock });
    const release = minter.hold();
    const impatient = new AbortController();
    const first = tokens.tokenFor('svc-a', { signal: impatient.signal });
    const second = tokens.tokenFor('svc-a', { signal: new AbortController().signal });
    impatient.abort();
    await expect(first).rejects.toMatchObject({ name: 'AbortError' });
    release();
    expect((await second).tokenId).toBe('jti-1');
    expect(minter.asked).toEqual(['svc-a']);
    // The mint ran under a signal of its own, and the token was cached for the next caller.
    expect(minter.signals[0]?.aborted).toBe(false);
    expect(await tokens.tokenFor('svc-a')).toBe(await second);
  });

  it('cancels a shared mint once every caller waiting on it has gone', async () => {
    const clock = new FakeClock();
    const minter = new FakeMinter(clock);
    const tokens = new AudienceTokens({ client: minter, clock });
    const release = minter.hold();
    const a = new AbortController();
    const b = new AbortController();
    const first = tokens.tokenFor('svc-a', { signal: a.signal });
    const second = tokens.tokenFor('svc-a', { signal: b.signal });
    a.abort();
    await expect(first).rejects.toMatchObject({ name: 'AbortError' });
    expect(minter.signals[0]?.aborted).toBe(false);
    b.abort();
    await expect(second).rejects.toMatchObject({ name: 'AbortError' });
    expect(minter.signals[0]?.aborted).toBe(true);
    release();
    // The next caller starts a mint of its own rather than joining the abandoned one.
    expect((await tokens.tokenFor('svc-a')).tokenId).toBe('jti-2');
  });

  it('keeps a stale but unexpired token when a refresh fails, and throws once it has expired', async () => {
    const clock = new FakeClock();
    const minter = new FakeMinter(clock);
    const tokens = new AudienceTokens({ client: minter, clock });
    const first = await tokens.tokenFor('svc-a');
    clock.advance(280_000);
    minter.failWith(new UnavailableError('control plane unreachable'));
    expect(await tokens.tokenFor('svc-a')).toBe(first);
    clock.advance(20_000);
    await expect(tokens.tokenFor('svc-a')).rejects.toBeInstanceOf(UnavailableError);
    minter.failWith(undefined);
    // Two failed mints in between: the fourth answer is the one kept.
    expect((await tokens.tokenFor('svc-a')).tokenId).toBe('jti-4');
    expect(minter.asked).toHaveLength(4);
  });

  it('refuses an unusable MintToken answer', async () => {
    const clock = new FakeClock();
    const tokens = new AudienceTokens({
      client: { mintToken: (audience) => Promise.resolve({ token: '', audience, issuedAtMs: 0, expiresAtMs: 1, generation: 1, keyId: '', tokenId: '' }) },
      clock,
    });
    await expect(tokens.tokenFor('svc-a')).rejects.toBeInstanceOf(UnavailableError);
  });

  it('bounds the audiences it caches, dropping the least recently minted', async () => {
    const clock = new FakeClock();
    const minter = new FakeMinter(clock);
    const tokens = new AudienceTokens({ client: minter, clock, maxAudiences: 2 });
    await tokens.tokenFor('a');
    await tokens.tokenFor('b');
    await tokens.tokenFor('c');
    expect(tokens.describe('a')).toBeUndefined();
    expect(tokens.describe('b')?.tokenId).toBe('jti-2');
    expect(tokens.describe('c')?.tokenId).toBe('jti-3');
    await tokens.tokenFor('a');
    expect(minter.asked).toEqual(['a', 'b', 'c', 'a']);
  });

  it('refuses an empty audience without minting', async () => {
    const clock = new FakeClock();
    const minter = new FakeMinter(clock);
    const tokens = new AudienceTokens({ client: minter, clock });
    await expect(tokens.tokenFor('')).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(minter.asked).toEqual([]);
  });

  it('closes when its signal aborts: cache dropped, ClosedError from then on, listener removed', async () => {
    const clock = new FakeClock();
    const minter = new FakeMinter(clock);
    const stop = new AbortController();
    const tokens = new AudienceTokens({ client: minter, clock, signal: stop.signal });
    await tokens.tokenFor('svc-a');
    expect(tokens.state).toBe('open');
    stop.abort();
    expect(tokens.state).toBe('closed');
    expect(tokens.describe('svc-a')).toBeUndefined();
    await expect(tokens.tokenFor('svc-a')).rejects.toBeInstanceOf(ClosedError);
    await expect(tokens.source('svc-a').get()).rejects.toBeInstanceOf(ClosedError);
    tokens.close();
    expect(minter.asked).toEqual(['svc-a']);
    const closedAtStart = new AudienceTokens({ client: minter, clock, signal: stop.signal });
    expect(closedAtStart.state).toBe('closed');
  });
});
