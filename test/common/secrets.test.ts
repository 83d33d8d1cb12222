/**
 * Secrets as read (one line of token characters; what is wrong said without the
 * value) and the filter every printed or logged library message goes through.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { readSecret } from '../../common/cli.js';
import { InvalidSecretError } from '../../common/errors.js';
import { createLogger } from '../../common/logger.js';
import { parseSecret, redactSecrets, SecretRedactor, tokenProblem } from '../../common/secrets.js';

/** A secret that looks like none of the words around it. */
const CANARY = 'cAnArY-9f3Qz7LmWx2Rt8Kp4Vb6Nd1Hs5Jg';

/** What `parseSecret` says about `raw`, or its value. */
function outcome(raw: string): string {
  try {
    return `ok:${parseSecret(raw, 'the file')}`;
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidSecretError);
    return (err as Error).message;
  }
}

describe('parseSecret', () => {
  const cases: { name: string; raw: string; said: string }[] = [
    { name: 'a bare token', raw: CANARY, said: `ok:${CANARY}` },
    { name: 'a final newline', raw: `${CANARY}\n`, said: `ok:${CANARY}` },
    { name: 'a CRLF line end (trailing \\r)', raw: `${CANARY}\r\n`, said: `ok:${CANARY}` },
    { name: 'blank lines and spaces around it', raw: `\n  ${CANARY}  \n\n`, said: `ok:${CANARY}` },
    { name: 'base64 with padding', raw: 'q83vEjRWeJA+/w==\n', said: 'ok:q83vEjRWeJA+/w==' },
    { name: 'a JWT', raw: 'eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln', said: 'ok:eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln' },
    { name: 'empty', raw: '', said: 'the file is empty' },
    { name: 'whitespace only', raw: ' \r\n\n', said: 'the file is empty' },
    { name: 'a second line', raw: `${CANARY}\nmore`, said: 'the file holds more than one line (line 1 and line 2): put the token alone on one line, with no comment' },
    { name: 'a comment line first', raw: `# admin token\n${CANARY}\n`, said: 'the file holds more than one line (line 1 and line 2): put the token alone on one line, with no comment' },
    { name: 'a second line after a blank one, CRLF', raw: `\r\n${CANARY}\r\n\r\nextra\r\n`, said: 'the file holds more than one line (line 2 and line 4): put the token alone on one line, with no comment' },
    { name: 'a carriage return inside', raw: `${CANARY.slice(0, 5)}\r${CANARY.slice(5)}`, said: 'the file contains a carriage return (position 6)' },
    { name: 'a space inside', raw: `${CANARY.slice(0, 3)} ${CANARY.slice(3)}`, said: 'the file contains a space at position 4' },
    { name: 'a tab inside', raw: `${CANARY}\tx`, said: `the file contains a tab at position ${CANARY.length + 1}` },
    { name: 'a control character', raw: `${CANARY}\u0001`, said: `the file contains a control character at position ${CANARY.length + 1}` },
    { name: 'a non-ASCII character', raw: `é${CANARY}`, said: 'the file contains a non-ASCII character at position 1' },
    { name: 'a comment after it on the line', raw: `${CANARY}#note`, said: `the file contains a character not allowed in a token at position ${CANARY.length + 1}` },
    { name: 'quotes around it', raw: `"${CANARY}"`, said: 'the file contains a character not allowed in a token at position 1' },
    { name: '= inside', raw: `ab==cd`, said: 'the file contains "=" inside it (position 3); "=" may only end a token' },
    { name: 'a blank line then a bad character', raw: `\n${CANARY}!\n`, said: `the file (line 2) contains a character not allowed in a token at position ${CANARY.length + 1}` },
    { name: 'longer than 8 KiB', raw: 'a'.repeat(8193), said: 'the file is longer than 8192 characters' },
  ];
  for (const { name, raw, said } of cases) {
    it(`${name}: ${said.startsWith('ok:') ? 'accepted' : 'refused'}, the value never in the message`, () => {
      const message = outcome(raw);
      expect(message).toBe(said);
      if (!said.startsWith('ok:')) {
        for (const line of raw.split('\n')) if (line.trim().length >= 6) expect(message).not.toContain(line.trim());
      }
    });
  }
});

describe('readSecret', () => {
  const dirs: string[] = [];
  const savedEnv = process.env.TETHER_TEST_SECRET;
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
    if (savedEnv === undefined) delete process.env.TETHER_TEST_SECRET;
    else process.env.TETHER_TEST_SECRET = savedEnv;
  });

  it('checks a variable as it checks a file (a variable used to be taken as it was, stray characters and all)', () => {
    process.env.TETHER_TEST_SECRET = `${CANARY}\r`;
    expect(readSecret(undefined, 'TETHER_TEST_SECRET')).toBe(CANARY);
    process.env.TETHER_TEST_SECRET = `${CANARY}\n# rotated 2024-01-01`;
    expect(() => readSecret(undefined, 'TETHER_TEST_SECRET')).toThrow('$TETHER_TEST_SECRET holds more than one line (line 1 and line 2)');
    process.env.TETHER_TEST_SECRET = `${CANARY}\u0007`;
    expect(() => readSecret(undefined, 'TETHER_TEST_SECRET')).toThrow(`$TETHER_TEST_SECRET contains a control character at position ${CANARY.length + 1}`);
  });

  it('names the file, registers what it read with the redactor, and never shows it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tether-secret-'));
    dirs.push(dir);
    const path = join(dir, 'admin-token');
    writeFileSync(path, `# the admin token\n${CANARY}\n`, { mode: 0o600 });
    const redactor = new SecretRedactor();
    let message = '';
    try {
      readSecret(path, 'TETHER_TEST_SECRET', redactor);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toBe(`${path} holds more than one line (line 1 and line 2): put the token alone on one line, with no comment`);
    expect(redactor.redact(`something quoted ${CANARY} back`)).toBe('something quoted [redacted] back');
  });
});

describe('redactSecrets', () => {
  it("removes the value grpc-js quotes when it refuses a header, whatever it holds", () => {
    let message = '';
    try {
      new grpc.Metadata().set('authorization', `Join host-1.${CANARY}\r`);
    } catch (err) {
      message = (err as Error).message;
    }
    // The library's own message: the reason this filter exists.
    expect(message).toContain(CANARY);
    expect(redactSecrets(message)).toBe('Metadata string value [redacted] contains illegal characters');
    expect(redactSecrets(`x: Metadata string value "Bearer a"b\nc" contains illegal characters; y`)).toBe('x: Metadata string value [redacted] contains illegal characters; y');
  });

  it('removes JWTs and what follows an authorization scheme, and leaves other words alone', () => {
    const jwt = 'eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudC0xIn0.AAAA-bbbb_CCCC';
    expect(redactSecrets(`token ${jwt} refused`)).toBe('token [redacted] refused');
    expect(redactSecrets(`sent Bearer ${CANARY}, got 16`)).toBe('sent Bearer [redacted], got 16');
    expect(redactSecrets(`header "authorization: Join host-1.${CANARY}"`)).toBe('header "authorization: Join [redacted]"');
    expect(redactSecrets('basic auth: Basic dXNlcjpwYXNz')).toBe('basic auth: Basic [redacted]');
    expect(redactSecrets('connect ECONNREFUSED 127.0.0.1:7443; join the queue')).toBe('connect ECONNREFUSED 127.0.0.1:7443; join the queue');
  });

  it('a redactor also removes every registered secret and each of its lines, but not short ones', () => {
    const redactor = new SecretRedactor();
    redactor.register(`# comment line here\n${CANARY}\r\n`);
    redactor.register('abc');
    expect(redactor.redact(`got ${CANARY} and # comment line here; abc`)).toBe('got [redacted] and [redacted]; abc');
  });

  it('every logged error goes through it: message, stack and properties', () => {
    const lines: string[] = [];
    const redactor = new SecretRedactor();
    redactor.register(CANARY);
    const logger = createLogger({ destination: { write: (line: string) => void lines.push(line) }, redactor });
    let thrown: unknown;
    try {
      new grpc.Metadata().set('authorization', `Join host-1.other-secret-value\r`);
    } catch (err) {
      thrown = err;
    }
    logger.error({ err: thrown }, 'failed');
    logger.error({ err: Object.assign(new Error(`wrapped ${CANARY}`), { details: `Bearer ${CANARY}`, cause: new Error(CANARY) }) }, 'failed again');
    const text = lines.join('');
    expect(text).not.toContain('other-secret-value');
    expect(text).not.toContain(CANARY);
    expect(text).toContain('Metadata string value [redacted] contains illegal characters');
  });
});

describe('tokenProblem', () => {
  it('accepts every kind of token Tether issues or expects, and nothing with a stray character', () => {
    for (const good of ['host-1-0a1b2c3d.QmFzZTY0dXJsLXNlY3JldA', 'eyJh.eyJz.c2ln', 'q83vEjRWeJA+/w==', 'a~b_c-d.e']) expect(tokenProblem(good)).toBeUndefined();
    for (const bad of ['', 'a\r', 'a\nb', 'a b', 'a\u0000', 'a"', 'a,b', 'a;b', '=a']) expect(tokenProblem(bad)).toBeDefined();
  });
});
