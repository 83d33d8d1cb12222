/**
 * Every option `agent-host --help` lists is one the host uses: each flag, and
 * its environment variable, reaches the configuration `runHost` is given. The
 * options are enumerated from the commander object, so a new option without a
 * row here fails. The program's own action runs, with a `run` that records
 * what it receives instead of starting a host.
 */
import { CommanderError, type Command } from 'commander';
import { describe, expect, it, vi } from 'vitest';
import { agentHostProgram, type HostFlags } from '../../agent-host/main.js';
import { allCommands, BOOLEAN_ENV_VALUES, booleanEnvOptions } from '../support/cli-options.js';

/** Parses `args` with exactly `env` for the host's variables (the rest unset): the flags `runHost` would get, or the error printed. */
async function resolveHost(args: readonly string[], env: Record<string, string> = {}): Promise<{ flags?: HostFlags; error?: string }> {
  let flags: HostFlags | undefined;
  let errorText = '';
  const program: Command = agentHostProgram((received) => {
    flags = received;
    return Promise.resolve();
  })
    .exitOverride()
    .configureOutput({ writeErr: (text) => (errorText += text), writeOut: () => undefined });
  const names = [...allCommands(program).flatMap((command) => command.options.map((option) => option.envVar).filter((name) => name !== undefined)), 'TETHER_JOIN_TOKEN'];
  for (const name of names) vi.stubEnv(name, undefined);
  for (const [name, value] of Object.entries(env)) vi.stubEnv(name, value);
  try {
    await program.parseAsync([...args], { from: 'user' });
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    return { error: errorText };
  } finally {
    vi.unstubAllEnvs();
  }
  return flags === undefined ? {} : { flags };
}

/** How one option is given and what it must turn into. */
interface Row {
  /** Its environment variable, or undefined for none: must match what commander has. */
  env: string | undefined;
  /** What follows the flag on the command line. */
  value: string;
  /** Its key in {@link HostFlags} and the value it must have there (never the default). */
  key: keyof HostFlags;
  expected: unknown;
}

const ROWS: Record<string, Row> = {
  '--server': { env: 'TETHER_SERVER', value: '127.0.0.1:7004, cp2.example:7443', key: 'server', expected: '127.0.0.1:7004,cp2.example:7443' },
  '--data-dir': { env: 'TETHER_HOST_DATA_DIR', value: '/var/lib/tether-host-test', key: 'dataDir', expected: '/var/lib/tether-host-test' },
  '--join-token-file': { env: 'TETHER_JOIN_TOKEN_FILE', value: '/run/secrets/join', key: 'joinTokenFile', expected: '/run/secrets/join' },
  '--ca-file': { env: 'TETHER_CA_FILE', value: '/etc/tether/ca.pem', key: 'caFile', expected: '/etc/tether/ca.pem' },
  '--capacity': { env: 'TETHER_CAPACITY', value: '7', key: 'capacity', expected: 7 },
  '--label': { env: undefined, value: 'pool=build', key: 'label', expected: [{ key: 'pool', value: 'build' }] },
  '--module': { env: undefined, value: 'echo=./echo.js', key: 'module', expected: ['echo=./echo.js'] },
  '--allow-command': { env: undefined, value: '/usr/bin/true', key: 'allowCommand', expected: ['/usr/bin/true'] },
  '--agents-dir': { env: 'TETHER_AGENTS_DIR', value: '/srv/agents', key: 'agentsDir', expected: '/srv/agents' },
  '--stop-grace': { env: 'TETHER_STOP_GRACE', value: '3s', key: 'stopGrace', expected: 3_000 },
  '--stop-deadline': { env: 'TETHER_STOP_DEADLINE', value: '20s', key: 'stopDeadline', expected: 20_000 },
  '--keepalive': { env: 'TETHER_KEEPALIVE', value: '40s', key: 'keepalive', expected: 40_000 },
  '--stall-after': { env: 'TETHER_STALL_AFTER', value: '45s', key: 'stallAfter', expected: 45_000 },
  '--handler-deadline': { env: 'TETHER_HANDLER_DEADLINE', value: '2m', key: 'handlerDeadline', expected: 120_000 },
  '--drain-timeout': { env: 'TETHER_DRAIN_TIMEOUT', value: '90s', key: 'drainTimeout', expected: 90_000 },
  '--metrics-listen': { env: 'TETHER_HOST_METRICS_LISTEN', value: '127.0.0.1:9100', key: 'metricsListen', expected: '127.0.0.1:9100' },
  '--log-level': { env: 'TETHER_LOG_LEVEL', value: 'debug', key: 'logLevel', expected: 'debug' },
};

describe('agent-host options take effect', () => {
  const program = agentHostProgram();

  it('has a row for every option it lists, and each row names the option\'s variable', () => {
    expect(program.options.map((option) => option.long).sort()).toEqual(Object.keys(ROWS).sort());
    for (const option of program.options) expect(option.envVar, option.long).toBe(ROWS[option.long as string]?.env);
    expect(program.commands).toEqual([]);
  });

  it.each(Object.entries(ROWS))('%s: from the flag and from its variable', async (flag, row) => {
    const defaults = (await resolveHost([])).flags as HostFlags;
    expect(defaults[row.key], 'the row must not test the default').not.toEqual(row.expected);
    const fromFlag = await resolveHost([flag, row.value]);
    expect(fromFlag.error).toBeUndefined();
    expect(fromFlag.flags?.[row.key]).toEqual(row.expected);
    if (row.env !== undefined) {
      const fromEnv = await resolveHost([], { [row.env]: row.value });
      expect(fromEnv.error).toBeUndefined();
      expect(fromEnv.flags?.[row.key]).toEqual(row.expected);
    }
  });

  it.each([
    ['127.0.0.1:1,', 'address 2 of 2 is empty'],
    ['', 'the address is empty'],
    ['127.0.0.1:1,nope', 'address 2 of 2 must be host:port'],
  ])('refuses the --server list %j from the flag and from TETHER_SERVER, naming the entry', async (value, message) => {
    for (const outcome of [await resolveHost(['--server', value]), await resolveHost([], { TETHER_SERVER: value })]) {
      expect(outcome.flags).toBeUndefined();
      expect(outcome.error).toContain(`--server: ${message}`);
    }
  });

  it('has no boolean option with a variable today; any added is parsed strictly', async () => {
    const found = booleanEnvOptions(program);
    expect(found.map(({ option }) => option.long)).toEqual([]);
    for (const { option } of found) {
      for (const [value, meaning] of BOOLEAN_ENV_VALUES) {
        const outcome = await resolveHost([], { [option.envVar as string]: value });
        if (meaning === undefined) expect(outcome.error).toContain(option.envVar);
        else expect((outcome.flags as unknown as Record<string, unknown>)[option.attributeName()] === true).toBe(meaning);
      }
    }
  });
});
