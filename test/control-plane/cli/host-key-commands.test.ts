/**
 * The `control-plane` binary's host and key commands, run for real (`node
 * bin/control-plane.js ...`) against a control plane and host in this process:
 * `hosts revoke`, `keys ls`, `keys rotate`, `keys revoke`.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { runControlPlaneCli, type CliRun } from '../../support/control-plane-cli.js';
import { JWKS_MAX_AGE_MS } from '../../../control-plane/tokens/signing-keys.js';
import { call, Harness } from '../../support/harness.js';
import { assertNoSecrets } from '../../support/secrets.js';

/** Runs `control-plane <args>` against `harness` (server and admin token from the environment, nothing else inherited). */
async function cli(harness: Harness, args: string[]): Promise<CliRun> {
  const run = await runControlPlaneCli(args, { PATH: process.env.PATH ?? '', TETHER_SERVER: harness.target, TETHER_ADMIN_TOKEN: harness.adminToken });
  assertNoSecrets(run.stdout + run.stderr, [harness.adminToken], `the output of control-plane ${args.join(' ')}`);
  return run;
}

/** Runs the binary, expects it to succeed, and returns its stdout. */
async function ok(harness: Harness, args: string[]): Promise<string> {
  const run = await cli(harness, args);
  expect(run.status, `control-plane ${args.join(' ')}\n${run.stderr}`).toBe(0);
  return run.stdout;
}

describe('control-plane hosts revoke / keys', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('keys ls shows the signer and the standby with their times; keys rotate promotes the standby once the JWKS cache lifetime has passed; keys revoke takes a key out', async () => {
    harness = await Harness.start({ agentTokenTtlMs: 60_000, hostTokenTtlMs: 120_000, clockToleranceMs: 30_000 });
    const h = harness;
    type Listed = { keyId: string; state: string; createdAt: string; signingSince: string | null; retiredAt: string | null; verifyUntil: string | null };
    const before = JSON.parse(await ok(h, ['keys', 'ls', '-o', 'json'])) as Listed[];
    expect(before.map((key) => key.state).sort()).toEqual(['signing', 'standby']);
    const first = before.find((key) => key.state === 'signing');
    const standby = before.find((key) => key.state === 'standby');
    expect(first?.keyId).toBe(h.cp.keys.active().kid);
    expect(first?.signingSince).toBe(new Date(h.clock.now()).toISOString());
    expect(standby?.createdAt).toBe(new Date(h.clock.now()).toISOString());
    expect(standby?.signingSince).toBeNull();

    // Too soon: the standby has not been published longer than the JWKS cache lifetime. One clear line, exit 4 (refused).
    const early = await cli(h, ['keys', 'rotate']);
    expect(early.status).toBe(4);
    expect(early.stderr).toMatch(/JWKS cache lifetime/);

    h.clock.advance(JWKS_MAX_AGE_MS + 1);
    const rotated = JSON.parse(await ok(h, ['keys', 'rotate', '-o', 'json'])) as { keyId: string; retiredKeyId: string; retiredVerifiesUntil: string; standbyKeyId: string };
    expect(rotated.retiredKeyId).toBe(first?.keyId);
    expect(rotated.keyId).toBe(standby?.keyId);
    expect(rotated.keyId).toBe(h.cp.keys.active().kid);
    // The retired key verifies for the longest token lifetime plus the clock tolerance.
    expect(rotated.retiredVerifiesUntil).toBe(new Date(h.clock.now() + 150_000).toISOString());

    const table = (await ok(h, ['keys', 'ls'])).trim().split('\n');
    expect(table[0]).toMatch(/^KEY\s+PURPOSE\s+ALG\s+STATE\s+CREATED\s+SIGNING_SINCE\s+RETIRED\s+VERIFIES_UNTIL$/);
    const rows = table.slice(1).map((line) => line.split(/\s+/));
    expect(rows.map((row) => [row[0], row[3]])).toEqual(
      expect.arrayContaining([
        [first?.keyId, 'verifying-only'],
        [rotated.keyId, 'signing'],
        [rotated.standbyKeyId, 'standby'],
      ]),
    );
    expect(rows).toHaveLength(3);

    const revoked = JSON.parse(await ok(h, ['keys', 'revoke', rotated.keyId, '-o', 'json'])) as { keyId: string; revoked: boolean; signerKeyId: string };
    expect(revoked).toMatchObject({ keyId: rotated.keyId, revoked: true, signerKeyId: rotated.standbyKeyId });
    const after = JSON.parse(await ok(h, ['keys', 'ls', '-o', 'json'])) as Listed[];
    expect(after.find((key) => key.keyId === rotated.keyId)?.state).toBe('revoked');
    expect(after.find((key) => key.keyId === rotated.standbyKeyId)?.state).toBe('signing');
    const unknown = await cli(h, ['keys', 'revoke', 'no-such-key']);
    expect(unknown.status).toBe(3);
    expect(unknown.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('hosts revoke refuses the host for good and moves its agents; an unknown host is one clear error line', async () => {
    harness = await Harness.start();
    const h = harness;
    const { host, hostId } = await h.startHost('to-revoke');
    await h.dispatch(host, hostId, 'cli-moved');

    const printed = JSON.parse(await ok(h, ['hosts', 'revoke', hostId, '-o', 'json'])) as { hostId: string; revoked: boolean; agentsMoved: number };
    expect(printed).toEqual({ hostId, revoked: true, agentsMoved: 1 });
    expect(await host.done).toMatchObject({ refusal: 'revoked' });
    const listed = await call(h.admin.listHosts.bind(h.admin), { pageSize: 0, pageToken: '' });
    expect(listed.hosts.find((x) => x.hostId === hostId)?.state).toBe('revoked');

    const unknown = await cli(h, ['hosts', 'revoke', 'nobody-00000000']);
    expect(unknown.status).toBe(3);
    expect(unknown.stderr.trim()).toMatch(/^error: not found: /);
    expect(unknown.stdout).toBe('');
  });
});
