/**
 * Planted canary secrets (admin, join, host and agent tokens, with stray
 * characters: a trailing `\r`, a second line, a comment line, a control
 * character, a carriage return inside) are searched for in everything the
 * binaries print, stdout and stderr, not only their logs, and never found.
 *
 * It used to go otherwise: grpc-js refuses such a header value with
 * `Metadata string value "<the whole value>" contains illegal characters`,
 * which `control-plane` printed, and `agent-host` logged on every retry of a
 * loop that never ended. Every binary here is the real one (`node bin/…`),
 * against a real `control-plane serve` on 127.0.0.1:0.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServiceClient } from '../../gen/tether/v1/agent.js';
import { ControlPlaneProcess } from '../support/control-plane-process.js';
import { RunningBinary, runBinary, type CliRun } from '../support/control-plane-cli.js';
import { bearer, call, statusOf } from '../support/harness.js';
import { probeHostConnect } from '../support/host-stream-probe.js';
import { assertNoCanaries } from '../support/secrets.js';

/** A random token-shaped secret: 24 base64url characters no ordinary output holds. */
function secret(): string {
  return randomBytes(18).toString('base64url');
}

const ADMIN = secret();
const WRONG_ADMIN = secret();
const FORGED_JOIN_SECRET = secret();
const AGENT_SIGNATURE = secret();
const HOST_SIGNATURE = secret();
/** JWT-shaped, so the pattern filter would catch them too; the windows below look for their random part. */
const AGENT_JWT = `eyJhbGciOiJFZERTQSIsInR5cCI6InRldGhlci1hZ2VudCtqd3QifQ.eyJzdWIiOiJjYW5hcnkifQ.${AGENT_SIGNATURE}`;
const HOST_JWT = `eyJhbGciOiJFZERTQSIsInR5cCI6InRldGhlci1ob3N0K2p3dCJ9.eyJzdWIiOiJjYW5hcnkifQ.${HOST_SIGNATURE}`;

describe('canary secrets never appear in what the binaries print', () => {
  const dirs: string[] = [];
  let cp: ControlPlaneProcess;
  /** The real join token of an enrolled host (its secret part is a canary too: it must never be printed but by `enroll`). */
  let joinToken = '';
  /** Everything every binary printed, by where it came from. */
  const printed: { where: string; text: string }[] = [];

  function canaries(): { name: string; parts: string[] }[] {
    return [
      { name: 'admin token', parts: [ADMIN] },
      { name: 'wrong admin token', parts: [WRONG_ADMIN] },
      { name: 'forged join secret', parts: [FORGED_JOIN_SECRET] },
      { name: 'agent token', parts: [AGENT_SIGNATURE] },
      { name: 'host token', parts: [HOST_SIGNATURE] },
      ...(joinToken === '' ? [] : [{ name: 'join token', parts: [joinToken.slice(joinToken.indexOf('.') + 1)] }]),
    ];
  }

  function record(where: string, run: Pick<CliRun, 'stdout' | 'stderr'>): void {
    printed.push({ where: `${where} (stdout)`, text: run.stdout }, { where: `${where} (stderr)`, text: run.stderr });
    assertNoCanaries(run.stdout, canaries(), `${where} (stdout)`);
    assertNoCanaries(run.stderr, canaries(), `${where} (stderr)`);
  }

  function tempDir(prefix: string): string {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    dirs.push(dir);
    return dir;
  }

  /** An environment with nothing inherited but PATH, pointed at the control plane, with no admin token to fall back on. */
  function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return { PATH: process.env.PATH ?? '', TETHER_SERVER: `127.0.0.1:${cp.port}`, TETHER_DATA_DIR: tempDir('tether-canary-cli-'), ...extra };
  }

  beforeAll(async () => {
    // The admin token as a CRLF file would hand it over: the trailing \r is only whitespace.
    cp = await ControlPlaneProcess.start({ dataDir: tempDir('tether-canary-cp-'), adminToken: `${ADMIN}\r` });
  });

  afterAll(async () => {
    await cp.close();
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  const everyCommand = [['agents', 'ls'], ['hosts', 'enroll', 'never-made'], ['keys', 'ls'], ['messages', 'ls', 'some-agent']];
  // Exit 1 (failure) for a token that cannot be read, 4 (refused) for one the control plane refuses.
  const adminVariants: { name: string; env: () => NodeJS.ProcessEnv; said: RegExp; commands?: string[][]; status?: number }[] = [
    { name: 'a wrong admin token', env: () => env({ TETHER_ADMIN_TOKEN: WRONG_ADMIN }), said: /^error: the control plane refused the admin token \(not an admin token\)/, commands: everyCommand, status: 4 },
    {
      name: 'a control character',
      env: () => env({ TETHER_ADMIN_TOKEN: `${WRONG_ADMIN}\u0001` }),
      said: /\$TETHER_ADMIN_TOKEN contains a control character at position 25/,
      commands: everyCommand,
    },
    { name: 'a second line', env: () => env({ TETHER_ADMIN_TOKEN: `${ADMIN}\n# rotated` }), said: /\$TETHER_ADMIN_TOKEN holds more than one line \(line 1 and line 2\)/ },
    { name: 'a carriage return inside', env: () => env({ TETHER_ADMIN_TOKEN: `${ADMIN.slice(0, 10)}\r${ADMIN.slice(10)}` }), said: /contains a carriage return \(position 11\)/ },
    {
      name: 'a comment line in --admin-token-file',
      env: () => {
        const file = join(tempDir('tether-canary-admin-'), 'admin-token');
        writeFileSync(file, `# the admin token\n${ADMIN}\n`, { mode: 0o600 });
        return env({ TETHER_ADMIN_TOKEN_FILE: file });
      },
      said: /admin-token holds more than one line \(line 1 and line 2\)/,
    },
    {
      name: 'a bad character in <data-dir>/admin-token',
      env: () => {
        const dataDir = tempDir('tether-canary-data-');
        writeFileSync(join(dataDir, 'admin-token'), `${ADMIN} # ours\n`, { mode: 0o600 });
        return env({ TETHER_DATA_DIR: dataDir });
      },
      said: /admin-token contains a space at position 25/,
    },
  ];
  for (const variant of adminVariants) {
    it(`control-plane commands with ${variant.name} say what is wrong and never show it`, async () => {
      // Two at a time: the machine has two cores, and each run is mostly starting Node.
      const commands = variant.commands ?? [['agents', 'ls']];
      for (let i = 0; i < commands.length; i += 2) {
        await Promise.all(
          commands.slice(i, i + 2).map(async (args) => {
            const run = await runBinary('control-plane', args, variant.env());
            record(`control-plane ${args.join(' ')} with ${variant.name}`, run);
            expect(run.status, `${args.join(' ')}: ${run.stderr}`).toBe(variant.status ?? 1);
            expect(run.stderr).toMatch(variant.said);
          }),
        );
      }
    });
  }

  it('control: the right admin token, with the CRLF a Windows editor leaves, works', async () => {
    const listed = await runBinary('control-plane', ['hosts', 'ls'], env({ TETHER_ADMIN_TOKEN: `${ADMIN}\r\n` }));
    record('control-plane hosts ls with the admin token', listed);
    expect(listed.status, listed.stderr).toBe(0);
  });

  it('control-plane serve with a malformed admin token exits 1 saying what is wrong, never showing it', async () => {
    for (const [value, said] of [
      [`${ADMIN}\n${ADMIN}`, /holds more than one line/],
      [`${ADMIN}\u0007x`, /contains a control character at position 25/],
    ] as const) {
      const run = await runBinary('control-plane', ['serve'], {
        ...env({ TETHER_ADMIN_TOKEN: value }),
        TETHER_LISTEN: '127.0.0.1:0',
        TETHER_HTTP_LISTEN: '',
      });
      record('control-plane serve with a malformed admin token', run);
      expect(run.status, run.stderr).toBe(1);
      expect(run.stderr).toMatch(said);
    }
  });

  it('control-plane serve with a malformed --admin-token-file (flag or variable) exits 1 saying what is wrong, never showing it', async () => {
    const file = join(tempDir('tether-canary-serve-'), 'admin-token');
    writeFileSync(file, `# the admin token\r\n${ADMIN}\r\n`, { mode: 0o600 });
    const base = { ...env({}), TETHER_LISTEN: '127.0.0.1:0', TETHER_HTTP_LISTEN: '' };
    for (const [args, extra] of [
      [['--admin-token-file', file, 'serve'], {}],
      [['serve'], { TETHER_ADMIN_TOKEN_FILE: file }],
    ] as const) {
      const run = await runBinary('control-plane', [...args], { ...base, ...extra });
      record(`control-plane ${args.join(' ')} with a comment line in its admin token file`, run);
      expect(run.status, run.stderr).toBe(1);
      expect(run.stderr).toMatch(/admin-token holds more than one line \(line 1 and line 2\)/);
    }
  });

  it('agent-host with a malformed join token or host credential exits 1 saying what is wrong, never showing it, and the join token still works', async () => {
    const enrolled = await runBinary('control-plane', ['hosts', 'enroll', 'canary'], env({ TETHER_ADMIN_TOKEN: ADMIN }));
    expect(enrolled.status, enrolled.stderr).toBe(0);
    joinToken = enrolled.stdout.trim();
    expect(joinToken).toMatch(/^canary-[0-9a-f]{8}\.[A-Za-z0-9_-]+$/);
    // Its stdout is the join token, by design (shown once); the rest of what it printed is scanned.
    record('control-plane hosts enroll', { stdout: '', stderr: enrolled.stderr });

    const hostEnv = (extra: Record<string, string>): NodeJS.ProcessEnv => ({
      PATH: process.env.PATH ?? '',
      TETHER_SERVER: `127.0.0.1:${cp.port}`,
      TETHER_HOST_DATA_DIR: tempDir('tether-canary-host-'),
      ...extra,
    });
    const joinFile = (content: string): string => {
      const file = join(tempDir('tether-canary-join-'), 'join-token');
      writeFileSync(file, content, { mode: 0o600 });
      return file;
    };
    const credentialDir = (token: string): string => {
      const dir = tempDir('tether-canary-cred-');
      writeFileSync(join(dir, 'host-credential.json'), JSON.stringify({ token, issuedAtMs: 1, expiresAtMs: 2, generation: 1, keyId: 'k', tokenId: 't' }), { mode: 0o600 });
      return dir;
    };
    const split = joinToken.indexOf('.') + 10;
    const variants: { name: string; env: () => NodeJS.ProcessEnv; said: RegExp }[] = [
      { name: 'a control character', env: () => hostEnv({ TETHER_JOIN_TOKEN: `${joinToken}\u0001` }), said: /\$TETHER_JOIN_TOKEN contains a control character/ },
      { name: 'a second line', env: () => hostEnv({ TETHER_JOIN_TOKEN: `${joinToken}\n${joinToken}` }), said: /holds more than one line \(line 1 and line 2\)/ },
      { name: 'a carriage return inside', env: () => hostEnv({ TETHER_JOIN_TOKEN: `${joinToken.slice(0, split)}\r${joinToken.slice(split)}` }), said: /contains a carriage return/ },
      { name: 'a comment line in --join-token-file', env: () => hostEnv({ TETHER_JOIN_TOKEN_FILE: joinFile(`# join token for canary\r\n${joinToken}\r\n`) }), said: /join-token holds more than one line \(line 1 and line 2\)/ },
      { name: 'a forged join token with a stray character', env: () => hostEnv({ TETHER_JOIN_TOKEN: `canary-00000000.${FORGED_JOIN_SECRET}\u007f` }), said: /contains a control character/ },
      {
        name: 'a stored host credential with a control character',
        env: () => hostEnv({ TETHER_HOST_DATA_DIR: credentialDir(`${HOST_JWT}\u0001`) }),
        said: /host-credential\.json: "token" contains a control character/,
      },
      {
        name: 'a stored host credential with a second line',
        env: () => hostEnv({ TETHER_HOST_DATA_DIR: credentialDir(`${HOST_JWT}\n# saved`) }),
        said: /host-credential\.json: "token" holds more than one line/,
      },
    ];
    for (const variant of variants) {
      const run = await runBinary('agent-host', [], variant.env());
      record(`agent-host with ${variant.name}`, run);
      expect(run.status, `${variant.name}: ${run.stderr}`).toBe(1);
      expect(run.stderr).toMatch(variant.said);
    }

    // None of those sent it, so the join token is still good: a host joins with it (the CRLF a file may carry is whitespace).
    const host = RunningBinary.start('agent-host', [], hostEnv({ TETHER_JOIN_TOKEN: `${joinToken}\r\n` }));
    try {
      await host.waitForOutput('connected to control plane', 'the host to join with the real join token');
    } finally {
      expect(await host.stop()).toBe(0);
      record('agent-host with the real join token', host);
    }
  });

  it('forged agent, host and join tokens sent to the control plane are refused and never printed', async () => {
    const target = `127.0.0.1:${cp.port}`;
    const agents = new AgentServiceClient(target, grpc.credentials.createInsecure());
    try {
      expect(await statusOf(call(agents.whoAmI.bind(agents), {}, bearer(AGENT_JWT)))).toBe(grpc.status.UNAUTHENTICATED);
      expect(await statusOf(call(agents.whoAmI.bind(agents), {}, bearer(HOST_JWT)))).toBe(grpc.status.UNAUTHENTICATED);
    } finally {
      agents.close();
    }
    for (const value of [`Bearer ${HOST_JWT}`, `Join canary-00000000.${FORGED_JOIN_SECRET}`, `Bearer ${WRONG_ADMIN}`]) {
      const metadata = new grpc.Metadata();
      metadata.set('authorization', value);
      expect((await probeHostConnect(target, metadata)).code).toBe(grpc.status.UNAUTHENTICATED);
    }
  });

  // Last: stops the control plane and scans all it printed in this file's runs.
  it('the control plane printed none of them either, and every scan above had something to scan', async () => {
    await cp.stop();
    printed.push({ where: 'control-plane serve', text: cp.outputText() });
    for (const { where, text } of printed) assertNoCanaries(text, canaries(), where);
    // The scans were of real output: every failing run above said why on stderr (asserted there), and the control plane logged.
    expect(cp.outputText()).toMatch(/control plane serving/);
    expect(cp.outputText()).toMatch(/shutting down/);
  });
});
