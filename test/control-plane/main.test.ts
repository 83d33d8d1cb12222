/**
 * The flags of `control-plane serve`: every duration flag has a floor and a
 * ceiling, and --max-payload-bytes is capped below what a host receives, net
 * of the envelope. Refusals name the flag. The table runs through the real
 * command-line program in-process (its action replaced, so nothing serves);
 * the real binary is run for the refusals an operator would meet first.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { afterEach, describe, expect, it } from 'vitest';
import { HOST_MAX_RECEIVE_MESSAGE_BYTES, MAX_PAYLOAD_BYTES_CEILING } from '../../common/protocol.js';
import { SERVE_DURATION_BOUNDS } from '../../control-plane/cli/serve-command.js';
import { MAX_OUTBOX_BYTES_BOUNDS } from '../../control-plane/control-plane.js';
import { controlPlaneProgram } from '../../control-plane/main.js';
import { runControlPlaneCli } from '../support/control-plane-cli.js';
import { ControlPlaneProcess } from '../support/control-plane-process.js';

const DAY_MS = 86_400_000;

/** What `control-plane serve <args>` parses to, or the error it refuses them with; never serves. */
async function parseServe(args: readonly string[]): Promise<{ flags?: Record<string, unknown>; error?: string }> {
  const program = controlPlaneProgram().exitOverride();
  const serve = program.commands.find((command) => command.name() === 'serve') as Command;
  let flags: Record<string, unknown> | undefined;
  let errorText = '';
  serve
    .exitOverride()
    .configureOutput({ writeErr: (text) => (errorText += text), writeOut: () => undefined })
    .action((parsed: Record<string, unknown>) => {
      flags = parsed;
    });
  try {
    await program.parseAsync(['serve', ...args], { from: 'user' });
  } catch {
    return { error: errorText };
  }
  return flags === undefined ? {} : { flags };
}

const DURATION_FLAGS: [string, keyof typeof SERVE_DURATION_BOUNDS][] = [
  ['--agent-token-ttl', 'agentTokenTtl'],
  ['--host-token-ttl', 'hostTokenTtl'],
  ['--audience-token-ttl', 'audienceTokenTtl'],
  ['--join-token-ttl', 'joinTokenTtl'],
  ['--clock-tolerance', 'clockTolerance'],
  ['--heartbeat-interval', 'heartbeatInterval'],
  ['--keepalive', 'keepalive'],
  ['--shutdown-grace', 'shutdownGrace'],
  ['--lost-host-grace', 'lostHostGrace'],
  ['--audit-max-age', 'auditMaxAge'],
  ['--event-retention', 'eventRetention'],
];

describe('control-plane serve flags', () => {
  it('bounds every duration flag of serve', () => {
    const durationOptions = (controlPlaneProgram().commands.find((command) => command.name() === 'serve') as Command).options
      .filter((option) => option.flags.includes('<duration>'))
      .map((option) => option.long);
    expect(durationOptions.sort()).toEqual(DURATION_FLAGS.map(([flag]) => flag).sort());
    for (const [, key] of DURATION_FLAGS) {
      const { minMs, maxMs } = SERVE_DURATION_BOUNDS[key];
      // Every ceiling fits one timer's reach or goes through SystemClock's chained sleep: none is unbounded.
      expect(Number.isSafeInteger(maxMs)).toBe(true);
      expect(maxMs).toBeGreaterThan(minMs);
    }
  });

  it.each(DURATION_FLAGS)('%s takes its floor and its ceiling, and refuses past either, naming itself', async (flag, key) => {
    const { minMs, maxMs } = SERVE_DURATION_BOUNDS[key];
    expect((await parseServe([`${flag}=${minMs}`])).flags?.[key]).toBe(minMs);
    expect((await parseServe([`${flag}=${maxMs}`])).flags?.[key]).toBe(maxMs);
    const over = await parseServe([`${flag}=${maxMs + 1}`]);
    expect(over.flags).toBeUndefined();
    expect(over.error).toContain(flag);
    expect(over.error).toMatch(/must be from .* to /);
    const under = await parseServe([`${flag}=${minMs === 0 ? '-1s' : String(minMs - 1)}`]);
    expect(under.flags).toBeUndefined();
    expect(under.error).toContain(flag);
  });

  it('refuses --agent-token-ttl 1s and 0 (the floor is 10 s: shorter made a signing storm), naming the flag', async () => {
    for (const value of ['1s', '0', '9s']) {
      const parsed = await parseServe(['--agent-token-ttl', value]);
      expect(parsed.flags, value).toBeUndefined();
      expect(parsed.error, value).toContain(`--agent-token-ttl must be from 10s to 7d, got ${value}`);
    }
    expect((await parseServe(['--agent-token-ttl', '10s'])).flags?.agentTokenTtl).toBe(10_000);
  });

  it('refuses a token lifetime of a year and a zero heartbeat interval, in any unit', async () => {
    expect((await parseServe(['--agent-token-ttl', '1y'])).error).toContain('--agent-token-ttl must be from 10s to 7d, got 1y');
    expect((await parseServe(['--host-token-ttl', '366d'])).error).toContain('--host-token-ttl must be from 1m to 365d, got 366d');
    // 75 days, the TTL that used to spin the credential loop, is allowed: SystemClock waits it out.
    expect((await parseServe(['--host-token-ttl', '75d'])).flags?.hostTokenTtl).toBe(75 * DAY_MS);
    expect((await parseServe(['--heartbeat-interval', '0'])).error).toContain('--heartbeat-interval');
  });

  it('caps --max-payload-bytes below a host receive limit, net of the envelope', async () => {
    expect(MAX_PAYLOAD_BYTES_CEILING).toBeLessThan(HOST_MAX_RECEIVE_MESSAGE_BYTES);
    expect((await parseServe([`--max-payload-bytes=${MAX_PAYLOAD_BYTES_CEILING}`])).flags?.maxPayloadBytes).toBe(MAX_PAYLOAD_BYTES_CEILING);
    for (const value of [MAX_PAYLOAD_BYTES_CEILING + 1, 5 * 1024 * 1024, 8 * 1024 * 1024, 0]) {
      const refused = await parseServe(['--max-payload-bytes', String(value)]);
      expect(refused.flags).toBeUndefined();
      expect(refused.error).toContain(`--max-payload-bytes must be from 1 to ${MAX_PAYLOAD_BYTES_CEILING}`);
    }
  });

  it('takes --max-outbox-bytes (default 64 MiB) from the flag or TETHER_MAX_OUTBOX_BYTES, within its bounds', async () => {
    const { min, max } = MAX_OUTBOX_BYTES_BOUNDS;
    expect((await parseServe([])).flags?.maxOutboxBytes).toBe(64 * 1024 * 1024);
    expect((await parseServe([`--max-outbox-bytes=${min}`])).flags?.maxOutboxBytes).toBe(min);
    expect((await parseServe([`--max-outbox-bytes=${max}`])).flags?.maxOutboxBytes).toBe(max);
    for (const value of [min - 1, max + 1, 0]) {
      const refused = await parseServe(['--max-outbox-bytes', String(value)]);
      expect(refused.flags).toBeUndefined();
      expect(refused.error).toContain(`--max-outbox-bytes must be from ${min} to ${max}, got ${value}`);
    }
    const saved = process.env.TETHER_MAX_OUTBOX_BYTES;
    process.env.TETHER_MAX_OUTBOX_BYTES = '1048576';
    try {
      expect((await parseServe([])).flags?.maxOutboxBytes).toBe(1_048_576);
    } finally {
      if (saved === undefined) delete process.env.TETHER_MAX_OUTBOX_BYTES;
      else process.env.TETHER_MAX_OUTBOX_BYTES = saved;
    }
  });
});

describe('control-plane serve --max-rotations-per-second', () => {
  it('defaults to auto, takes auto or a whole number above 0, and refuses anything else naming the flag', async () => {
    expect((await parseServe([])).flags?.maxRotationsPerSecond).toBe('auto');
    expect((await parseServe(['--max-rotations-per-second', 'AUTO'])).flags?.maxRotationsPerSecond).toBe('auto');
    expect((await parseServe(['--max-rotations-per-second', '5000'])).flags?.maxRotationsPerSecond).toBe(5000);
    for (const value of ['0', '-3', '1.5', 'fast']) {
      const refused = await parseServe(['--max-rotations-per-second', value]);
      expect(refused.flags).toBeUndefined();
      expect(refused.error).toContain('--max-rotations-per-second');
    }
  });

  it('says what auto means in --help', () => {
    const serve = controlPlaneProgram().commands.find((command) => command.name() === 'serve') as Command;
    expect(serve.helpInformation().replace(/\s+/g, ' ')).toContain('auto: 2 × agents / (0.55 × agent TTL), at least 200');
  });
});

describe('the control-plane binary', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('refuses --max-payload-bytes 8 MiB before serving, naming the flag and the maximum', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tether-flags-'));
    dirs.push(dataDir);
    const run = await runControlPlaneCli(['--data-dir', dataDir, 'serve', '--listen', '127.0.0.1:0', '--http-listen', '', '--max-payload-bytes', String(8 * 1024 * 1024)], {
      PATH: process.env.PATH ?? '',
      TETHER_ADMIN_TOKEN: 'flag-test-admin-token',
    });
    expect(run.status).not.toBe(0);
    expect(run.stderr).toContain(`--max-payload-bytes must be from 1 to ${MAX_PAYLOAD_BYTES_CEILING}, got 8388608`);
  });

  it('refuses --max-outbox-bytes below --max-payload-bytes before serving, naming both flags', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tether-flags-'));
    dirs.push(dataDir);
    const run = await runControlPlaneCli(['--data-dir', dataDir, 'serve', '--listen', '127.0.0.1:0', '--http-listen', '', '--max-outbox-bytes', '65536'], {
      PATH: process.env.PATH ?? '',
      TETHER_ADMIN_TOKEN: 'flag-test-admin-token',
    });
    expect(run.status).not.toBe(0);
    expect(run.stderr).toContain('--max-outbox-bytes (65536) must be at least --max-payload-bytes (1048576)');
  });

  it('refuses an out-of-range duration from the environment too', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tether-flags-'));
    dirs.push(dataDir);
    const outcome = await ControlPlaneProcess.start({ dataDir, adminToken: 'flag-test-admin-token', env: { TETHER_HOST_TOKEN_TTL: '400d' } }).then(
      async (served) => {
        await served.close();
        return 'it served';
      },
      (err: Error) => err.message,
    );
    expect(outcome).toMatch(/--host-token-ttl must be from 1m to 365d, got 400d/);
  });
});
