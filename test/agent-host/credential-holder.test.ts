import { describe, expect, it } from 'vitest';
import { CredentialHolder } from '../../agent-host/credential-holder.js';
import { TokenExpiredError, TokenRevokedError, UnauthenticatedError } from '../../common/errors.js';
import type { Credential } from '../../gen/tether/v1/common.js';
import { FakeClock } from '../support/fake-clock.js';

const EPOCH = 'epoch-1';

function credential(generation: number, clock: FakeClock, ttlMs = 60_000): Credential {
  return {
    token: `token-gen-${generation}`,
    issuedAtMs: clock.now(),
    expiresAtMs: clock.now() + ttlMs,
    generation,
    keyId: 'kid-1',
    tokenId: `jti-${generation}`,
  };
}

describe('CredentialHolder', () => {
  it('throws before any credential is applied', () => {
    const holder = new CredentialHolder(new FakeClock());
    expect(holder.state).toBe('empty');
    expect(() => holder.get()).toThrow(UnauthenticatedError);
    expect(holder.generation).toBe(0);
    expect(holder.expiresAtMs).toBe(0);
  });

  it('returns the applied token, with its generation, expiry and id', () => {
    const clock = new FakeClock();
    const holder = new CredentialHolder(clock);
    const applied = credential(1, clock);
    expect(holder.apply(applied, EPOCH)).toBe('applied');
    expect(holder.state).toBe('holding');
    expect(holder.get()).toBe('token-gen-1');
    expect(holder.generation).toBe(1);
    expect(holder.expiresAtMs).toBe(applied.expiresAtMs);
    expect(holder.tokenId).toBe('jti-1');
  });

  it('throws TokenExpiredError once the token has expired, and works again after a fresh one', () => {
    const clock = new FakeClock();
    const holder = new CredentialHolder(clock);
    holder.apply(credential(1, clock, 60_000), EPOCH);
    clock.advance(59_999);
    expect(holder.get()).toBe('token-gen-1');
    clock.advance(1);
    expect(() => holder.get()).toThrow(TokenExpiredError);
    expect(holder.apply(credential(2, clock), EPOCH)).toBe('applied');
    expect(holder.get()).toBe('token-gen-2');
  });

  it.each([
    { what: 'an older generation', generation: 2, result: 'stale', held: 3 },
    { what: 'the same generation', generation: 3, result: 'stale', held: 3 },
    { what: 'a newer generation', generation: 4, result: 'applied', held: 4 },
  ] as const)('within one epoch, takes $what as $result', ({ generation, result, held }) => {
    const clock = new FakeClock();
    const holder = new CredentialHolder(clock);
    holder.apply(credential(3, clock), EPOCH);
    const offered = { ...credential(generation, clock), token: 'offered' };
    expect(holder.apply(offered, EPOCH)).toBe(result);
    expect(holder.generation).toBe(held);
    expect(holder.get()).toBe(result === 'applied' ? 'offered' : 'token-gen-3');
  });

  it('accepts a lower generation after an epoch change (a restored store)', () => {
    const clock = new FakeClock();
    const holder = new CredentialHolder(clock);
    holder.apply(credential(7, clock), EPOCH);
    expect(holder.apply(credential(1, clock), 'epoch-2')).toBe('applied');
    expect(holder.generation).toBe(1);
    expect(holder.get()).toBe('token-gen-1');
    // The order resets to the new epoch: its older generations are stale again.
    expect(holder.apply(credential(1, clock), 'epoch-2')).toBe('stale');
  });

  it('throws TokenRevokedError once revoked, and ignores later credentials', () => {
    const clock = new FakeClock();
    const holder = new CredentialHolder(clock);
    holder.apply(credential(1, clock), EPOCH);
    holder.revoke();
    expect(holder.state).toBe('revoked');
    expect(() => holder.get()).toThrow(TokenRevokedError);
    expect(holder.apply(credential(2, clock), EPOCH)).toBe('revoked');
    expect(holder.apply(credential(1, clock), 'epoch-2')).toBe('revoked');
    expect(() => holder.get()).toThrow(TokenRevokedError);
    expect(holder.state).toBe('revoked');
  });

  it('revokes an empty holder for good too', () => {
    const clock = new FakeClock();
    const holder = new CredentialHolder(clock);
    holder.revoke();
    expect(holder.apply(credential(1, clock), EPOCH)).toBe('revoked');
    expect(() => holder.get()).toThrow(TokenRevokedError);
  });

  describe('readOnly()', () => {
    it('reads the holder live: rotations, expiry and revocation show through', () => {
      const clock = new FakeClock();
      const holder = new CredentialHolder(clock);
      const view = holder.readOnly();
      expect(() => view.get()).toThrow(UnauthenticatedError);
      holder.apply(credential(1, clock), EPOCH);
      expect(view.get()).toBe('token-gen-1');
      expect(view.generation).toBe(1);
      holder.apply(credential(2, clock, 30_000), EPOCH);
      expect(view.get()).toBe('token-gen-2');
      expect(view.generation).toBe(2);
      expect(view.expiresAtMs).toBe(clock.now() + 30_000);
      clock.advance(30_000);
      expect(() => view.get()).toThrow(TokenExpiredError);
      holder.revoke();
      expect(() => view.get()).toThrow(TokenRevokedError);
    });

    it('is one frozen object with no way to set or revoke', () => {
      const clock = new FakeClock();
      const holder = new CredentialHolder(clock);
      holder.apply(credential(1, clock), EPOCH);
      const view = holder.readOnly();
      expect(holder.readOnly()).toBe(view);
      expect(Object.isFrozen(view)).toBe(true);
      expect(Object.getPrototypeOf(view)).toBeNull();
      expect(Reflect.ownKeys(view).sort()).toEqual(['expiresAtMs', 'generation', 'get']);
      for (const forbidden of ['apply', 'revoke', 'state', 'tokenId', 'readOnly']) {
        expect(forbidden in view, forbidden).toBe(false);
      }
      expect(view).not.toBeInstanceOf(CredentialHolder);
      for (const key of ['expiresAtMs', 'generation']) {
        // A getter with no setter.
        expect(Object.getOwnPropertyDescriptor(view, key), key).toMatchObject({ get: expect.any(Function), set: undefined });
      }
      expect(Object.getOwnPropertyDescriptor(view, 'get')?.writable).toBe(false);
    });

    it('cannot be changed or used to change the holder', () => {
      const clock = new FakeClock();
      const holder = new CredentialHolder(clock);
      holder.apply(credential(1, clock), EPOCH);
      const view = holder.readOnly() as unknown as Record<string, unknown>;
      // ES modules run in strict mode, where writing to a frozen object throws.
      expect(() => {
        view.generation = 99;
      }).toThrow(TypeError);
      expect(() => {
        view.revoke = (): void => undefined;
      }).toThrow(TypeError);
      expect(() => Object.defineProperty(view, 'get', { value: () => 'forged' })).toThrow(TypeError);
      expect(holder.readOnly().get()).toBe('token-gen-1');
      expect(holder.generation).toBe(1);
    });
  });
});
