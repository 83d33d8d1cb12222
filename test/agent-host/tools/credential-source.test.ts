import { chmodSync, mkdtempSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { fromFile, fromHolder, type CredentialSource, type FileSourceStats } from '../../../agent-host/tools/credential-source.js';
import { TokenRevokedError, UnauthenticatedError } from '../../../common/errors.js';

/** Writes `token` beside `path` (created 0600) and renames it over `path`, as the host does on rotation. */
function replaceAtomically(path: string, token: string, times?: { atime: Date; mtime: Date }): void {
  const beside = `${path}.next`;
  writeFileSync(beside, `${token}\n`, { mode: 0o600 });
  if (times !== undefined) utimesSync(beside, times.atime, times.mtime);
  renameSync(beside, path);
}

describe('fromFile', () => {
  let dir: string;
  let path: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-source-'));
    path = join(dir, 'token');
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads the file once, and not again while it is unchanged', () => {
    replaceAtomically(path, 'token-one');
    const stats: FileSourceStats = { reads: 0 };
    const source = fromFile(path, stats);
    expect(source.get()).toBe('token-one');
    expect(stats.reads).toBe(1);
    for (let i = 0; i < 5; i++) expect(source.get()).toBe('token-one');
    expect(stats.reads).toBe(1);
  });

  it('picks up a file replaced by write-beside-then-rename, once per replacement', () => {
    replaceAtomically(path, 'token-one');
    const stats: FileSourceStats = { reads: 0 };
    const source = fromFile(path, stats);
    expect(source.get()).toBe('token-one');
    replaceAtomically(path, 'token-two');
    expect(source.get()).toBe('token-two');
    expect(source.get()).toBe('token-two');
    expect(stats.reads).toBe(2);
    replaceAtomically(path, 'token-three');
    expect(source.get()).toBe('token-three');
    expect(stats.reads).toBe(3);
  });

  it('notices a replacement with the same size and modification time (the inode differs)', () => {
    // Whole seconds, so both files carry exactly the same times.
    const times = { atime: new Date(1_700_000_000_000), mtime: new Date(1_700_000_000_000) };
    replaceAtomically(path, 'token-AAAA', times);
    const stats: FileSourceStats = { reads: 0 };
    const source = fromFile(path, stats);
    expect(source.get()).toBe('token-AAAA');
    const before = statSync(path);
    replaceAtomically(path, 'token-BBBB', times);
    const after = statSync(path);
    expect(after.size).toBe(before.size);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    expect(after.ino).not.toBe(before.ino);
    expect(source.get()).toBe('token-BBBB');
    expect(stats.reads).toBe(2);
  });

  it('throws UnauthenticatedError, naming no token, for a missing, empty or unreadable file', () => {
    const source = fromFile(path);
    expect(() => source.get()).toThrow(UnauthenticatedError);
    writeFileSync(path, '\n', { mode: 0o600 });
    expect(() => source.get()).toThrow(UnauthenticatedError);
    replaceAtomically(path, 'token-secret-value');
    expect(source.get()).toBe('token-secret-value');
    if (process.getuid?.() !== 0) {
      // Root reads anything, so this case only holds for other users.
      replaceAtomically(path, 'token-other-value');
      chmodSync(path, 0o000);
      let caught: unknown;
      try {
        source.get();
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(UnauthenticatedError);
      expect(String((caught as Error).message)).not.toContain('token-');
    }
  });

  it('refuses a token with a stray character (a second line, a comment, a control character), saying what without showing it', () => {
    const canary = 'eyJhbGciOiJFZERTQSJ9.eyJjYW5hcnkiOjF9.Q2FuYXJ5U2lnbmF0dXJl';
    const source = fromFile(path);
    const problems: [string, string][] = [
      [`${canary}\n# rotated by hand`, `token file ${path} holds more than one line (line 1 and line 2)`],
      [`${canary}\u0001`, `token file ${path} contains a control character at position ${canary.length + 1}`],
      [`${canary.slice(0, 10)}\r${canary.slice(10)}`, `token file ${path} contains a carriage return (position 11)`],
    ];
    for (const [content, said] of problems) {
      replaceAtomically(path, content);
      let caught: unknown;
      try {
        source.get();
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(UnauthenticatedError);
      expect((caught as Error).message).toContain(said);
      expect((caught as Error).message).not.toContain(canary.slice(0, 20));
    }
    // A CRLF line end is only whitespace around the token.
    replaceAtomically(path, `${canary}\r`);
    expect(source.get()).toBe(canary);
  });

  it('is frozen and has nothing but get', () => {
    replaceAtomically(path, 'token-one');
    const source = fromFile(path);
    expect(Object.isFrozen(source)).toBe(true);
    expect(Reflect.ownKeys(source)).toEqual(['get']);
    expect(() => {
      source.get = () => 'forged';
    }).toThrow(TypeError);
    expect(source.get()).toBe('token-one');
  });
});

describe('fromHolder', () => {
  it('reads the holder at each call and exposes nothing else', () => {
    let current = 'gen-1';
    let revoked = false;
    const holder: CredentialSource & { apply(token: string): void; revoke(): void } = {
      get: () => {
        if (revoked) throw new TokenRevokedError();
        return current;
      },
      apply: (token) => {
        current = token;
      },
      revoke: () => {
        revoked = true;
      },
    };
    const source = fromHolder(holder);
    expect(source.get()).toBe('gen-1');
    holder.apply('gen-2');
    expect(source.get()).toBe('gen-2');
    expect(Object.isFrozen(source)).toBe(true);
    expect(Reflect.ownKeys(source)).toEqual(['get']);
    expect(Object.getPrototypeOf(source)).toBe(Object.prototype);
    holder.revoke();
    expect(() => source.get()).toThrow(TokenRevokedError);
  });
});
