/**
 * A host whose own credential is malformed (a join token or stored host
 * credential with a stray character) stops with an error saying what is wrong:
 * it used to hand the value to grpc-js, whose complaint quotes it, log that
 * complaint, and retry for ever.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentHost } from '../../agent-host/agent-host.js';
import { FileHostCredentialStore, MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import { InvalidSecretError } from '../../common/errors.js';
import { withinHangBound } from '../support/control-plane-process.js';
import { Harness } from '../support/harness.js';

/** The secret part of every canary here: distinctive enough that any 12 characters of it found in a log mean a leak. */
const CANARY_SECRET = 'Q2FuYXJ5U2VjcmV0Rm9ySG9zdA';
const CANARY_JWT = `eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjYW5hcnkifQ.${CANARY_SECRET}`;

/** Fails if `text` holds the canary or any 12 characters of its secret part. */
function expectNoCanary(text: string): void {
  for (let start = 0; start + 12 <= CANARY_SECRET.length; start++) expect(text).not.toContain(CANARY_SECRET.slice(start, start + 12));
}

describe('a host with a malformed credential', () => {
  const harnesses: Harness[] = [];
  const hosts: AgentHost[] = [];
  const dirs: string[] = [];
  afterEach(async () => {
    for (const host of hosts.splice(0)) await host.close();
    for (const harness of harnesses.splice(0)) await harness.close();
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  async function harness(): Promise<Harness> {
    const h = await Harness.start();
    harnesses.push(h);
    return h;
  }

  it('refuses to start with a join token holding a stray character, naming the fault and not the token', async () => {
    const h = await harness();
    for (const [joinToken, said] of [
      [`host-1.${CANARY_SECRET}\r`, `the join token contains a carriage return (position ${`host-1.${CANARY_SECRET}`.length + 1})`],
      [`host-1.${CANARY_SECRET}\n# enrolled today`, 'the join token holds more than one line (line 1 and line 2)'],
      [`host-1.${CANARY_SECRET}\u0000`, `the join token contains a control character at position ${`host-1.${CANARY_SECRET}`.length + 1}`],
      [CANARY_SECRET, 'the join token is not of the form ID.SECRET'],
    ] as const) {
      let caught: unknown;
      try {
        hosts.push(AgentHost.start({ target: h.target, clock: h.clock, logger: h.logs.logger, credentialStore: new MemoryHostCredentialStore(), joinToken }));
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(InvalidSecretError);
      expect((caught as Error).message).toContain(said);
      expectNoCanary(String((caught as Error).message));
    }
    expectNoCanary(h.logs.text());
  });

  it('stops (done settles with the fault) instead of retrying for ever when its stored credential holds a stray character', async () => {
    const h = await harness();
    const credentialStore = new MemoryHostCredentialStore();
    await credentialStore.save({ token: `${CANARY_JWT}\r`, issuedAtMs: 0, expiresAtMs: h.clock.now() + 3_600_000, generation: 1, keyId: 'k', tokenId: 't' });
    const host = AgentHost.start({ target: h.target, clock: h.clock, logger: h.logs.logger, credentialStore, reconnectMinDelayMs: 10, reconnectMaxDelayMs: 50 });
    hosts.push(host);
    const exit = await withinHangBound(host.done, 'the host with a malformed credential to stop');
    expect(exit).toEqual({ fault: `the stored host credential contains a carriage return (position ${CANARY_JWT.length + 1})` });
    expect(host.state).toBe('refused');
    expectNoCanary(h.logs.text());
  });

  it('a host credential file that is not a well-formed credential fails load, naming the file and the field only', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tether-host-cred-'));
    dirs.push(dir);
    const store = new FileHostCredentialStore(dir);
    const good = { token: CANARY_JWT, issuedAtMs: 1, expiresAtMs: 2, generation: 1, keyId: 'k', tokenId: 't' };
    const cases: [string, string][] = [
      [`{"token":"${CANARY_JWT}`, `${store.path} is not valid JSON`],
      [JSON.stringify({ ...good, token: `${CANARY_JWT}\n` }), `${store.path}: "token" contains a control character`],
      [JSON.stringify({ ...good, token: `${CANARY_JWT} x` }), `${store.path}: "token" contains a space`],
      [JSON.stringify({ ...good, token: 7 }), `${store.path}: "token" is not a string`],
      [JSON.stringify({ ...good, generation: -1 }), `${store.path}: "generation" is not a whole number`],
      [JSON.stringify({ ...good, expiresAtMs: '2' }), `${store.path}: "expiresAtMs" is not a whole number`],
      [JSON.stringify([good]), `${store.path}: "token" is not a string`],
    ];
    for (const [content, said] of cases) {
      writeFileSync(store.path, content, { mode: 0o600 });
      const caught = await store.load().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(caught).toBeInstanceOf(InvalidSecretError);
      expect((caught as Error).message).toContain(said);
      expectNoCanary(`${(caught as Error).message} ${(caught as Error).stack} ${String((caught as Error).cause)}`);
    }
    writeFileSync(store.path, JSON.stringify(good), { mode: 0o600 });
    expect(await store.load()).toEqual(good);
  });
});
