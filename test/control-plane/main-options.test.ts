/**
 * Every option the `control-plane` program lists is one its commands use: each
 * flag, and its environment variable, reaches the configuration the action
 * runs with. The options are enumerated from the commander objects, so a new
 * option without a row here fails, and so does a row whose flag no longer
 * arrives. The actions are replaced at the seam the program offers
 * (`ControlPlaneActions`): the real action code resolves the configuration,
 * nothing serves. Then the real binary proves `serve` uses --admin-token-file.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { CommanderError, type Command, type Option } from 'commander';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { ClientFlags } from '../../control-plane/cli/admin-commands.js';
import type { ServeFlags } from '../../control-plane/cli/serve-command.js';
import { controlPlaneProgram } from '../../control-plane/main.js';
import { SqliteStore, databasePath } from '../../control-plane/store/sqlite-store.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { ControlPlaneProcess } from '../support/control-plane-process.js';
import { allCommands, BOOLEAN_ENV_VALUES, booleanEnvOptions, pathOf } from '../support/cli-options.js';
import { runControlPlaneCli } from '../support/control-plane-cli.js';
import { bearer, call, statusOf } from '../support/harness.js';

/** Thrown by the fake admin connection: the command got as far as opening a client, with these flags. */
class Connected extends Error {
  constructor(readonly flags: ClientFlags) {
    super('connected');
  }
}

/** What one parse led to: the configuration serve or an admin command received, or the error printed. */
interface Outcome {
  serve?: ServeFlags;
  client?: ClientFlags;
  error?: string;
}

/** Every environment variable any option of `program` reads, and the secrets' variables read beside them. */
function envNames(program: Command): string[] {
  const names = allCommands(program).flatMap((command) => command.options.map((option) => option.envVar).filter((name) => name !== undefined));
  return [...names, 'TETHER_ADMIN_TOKEN', 'TETHER_JOIN_TOKEN'];
}

/** Parses `args` with exactly `env` for the program's variables (the rest unset), through the real actions up to the seam. */
async function resolveCli(args: readonly string[], env: Record<string, string> = {}): Promise<Outcome> {
  const outcome: Outcome = {};
  let errorText = '';
  const program = controlPlaneProgram({
    serve: (flags) => {
      outcome.serve = flags;
      return Promise.resolve();
    },
    connectAdmin: (flags) => {
      throw new Connected(flags);
    },
  });
  for (const command of allCommands(program)) {
    command.exitOverride().configureOutput({ writeErr: (text) => (errorText += text), writeOut: () => undefined });
  }
  for (const name of envNames(program)) vi.stubEnv(name, undefined);
  for (const [name, value] of Object.entries(env)) vi.stubEnv(name, value);
  try {
    await program.parseAsync([...args], { from: 'user' });
  } catch (err) {
    if (err instanceof Connected) outcome.client = err.flags;
    else if (err instanceof CommanderError) outcome.error = errorText;
    else throw err;
  } finally {
    vi.unstubAllEnvs();
  }
  return outcome;
}

/** How one option is given and what it must turn into. */
interface Row {
  /** Its environment variable, or undefined for none: must match what commander has. */
  env: string | undefined;
  /** What follows the flag on the command line (nothing for a boolean). */
  value: string | undefined;
  /** What the variable is set to (the flag's value, unless a boolean). */
  envValue?: string;
  /** Its key in the configuration and the value it must have there (never the default). */
  key: string;
  expected: unknown;
}

const SERVE_ROWS: Record<string, Row> = {
  '--listen': { env: 'TETHER_LISTEN', value: '127.0.0.1:7001', key: 'listen', expected: '127.0.0.1:7001' },
  '--http-listen': { env: 'TETHER_HTTP_LISTEN', value: '127.0.0.1:7002', key: 'httpListen', expected: '127.0.0.1:7002' },
  '--tls-cert': { env: 'TETHER_TLS_CERT', value: '/etc/tether/cert.pem', key: 'tlsCert', expected: '/etc/tether/cert.pem' },
  '--tls-key': { env: 'TETHER_TLS_KEY', value: '/etc/tether/key.pem', key: 'tlsKey', expected: '/etc/tether/key.pem' },
  '--insecure': { env: 'TETHER_INSECURE', value: undefined, envValue: 'yes', key: 'insecure', expected: true },
  '--agent-token-ttl': { env: 'TETHER_AGENT_TOKEN_TTL', value: '2h', key: 'agentTokenTtl', expected: 7_200_000 },
  '--host-token-ttl': { env: 'TETHER_HOST_TOKEN_TTL', value: '48h', key: 'hostTokenTtl', expected: 172_800_000 },
  '--audience-token-ttl': { env: 'TETHER_AUDIENCE_TOKEN_TTL', value: '2m', key: 'audienceTokenTtl', expected: 120_000 },
  '--issuer-url': { env: 'TETHER_ISSUER_URL', value: 'https://tether.example.com', key: 'issuerUrl', expected: 'https://tether.example.com' },
  '--join-token-ttl': { env: 'TETHER_JOIN_TOKEN_TTL', value: '3h', key: 'joinTokenTtl', expected: 10_800_000 },
  '--clock-tolerance': { env: 'TETHER_CLOCK_TOLERANCE', value: '5s', key: 'clockTolerance', expected: 5_000 },
  '--heartbeat-interval': { env: 'TETHER_HEARTBEAT_INTERVAL', value: '20s', key: 'heartbeatInterval', expected: 20_000 },
  '--keepalive': { env: 'TETHER_KEEPALIVE', value: '40s', key: 'keepalive', expected: 40_000 },
  '--shutdown-grace': { env: 'TETHER_SHUTDOWN_GRACE', value: '3s', key: 'shutdownGrace', expected: 3_000 },
  '--lost-host-grace': { env: 'TETHER_LOST_HOST_GRACE', value: '25m', key: 'lostHostGrace', expected: 1_500_000 },
  '--max-rotations-per-second': { env: 'TETHER_MAX_ROTATIONS_PER_SECOND', value: '50', key: 'maxRotationsPerSecond', expected: 50 },
  '--max-concurrent-hellos': { env: 'TETHER_MAX_CONCURRENT_HELLOS', value: '8', key: 'maxConcurrentHellos', expected: 8 },
  '--delivery-window': { env: 'TETHER_DELIVERY_WINDOW', value: '4', key: 'deliveryWindow', expected: 4 },
  '--max-delivery-attempts': { env: 'TETHER_MAX_DELIVERY_ATTEMPTS', value: '3', key: 'maxDeliveryAttempts', expected: 3 },
  '--max-outbox-messages': { env: 'TETHER_MAX_OUTBOX_MESSAGES', value: '77', key: 'maxOutboxMessages', expected: 77 },
  '--max-outbox-bytes': { env: 'TETHER_MAX_OUTBOX_BYTES', value: '2097152', key: 'maxOutboxBytes', expected: 2_097_152 },
  '--max-payload-bytes': { env: 'TETHER_MAX_PAYLOAD_BYTES', value: '4096', key: 'maxPayloadBytes', expected: 4096 },
  '--store': { env: 'TETHER_STORE', value: 'postgres://tether@db.example:5432/tether', key: 'store', expected: 'postgres://tether@db.example:5432/tether' },
  '--store-pool-size': { env: 'TETHER_STORE_POOL_SIZE', value: '4', key: 'storePoolSize', expected: 4 },
  '--audit-max-age': { env: 'TETHER_AUDIT_MAX_AGE', value: '30d', key: 'auditMaxAge', expected: 2_592_000_000 },
  '--audit-max-records': { env: 'TETHER_AUDIT_MAX_RECORDS', value: '5000', key: 'auditMaxRecords', expected: 5000 },
  '--event-retention': { env: 'TETHER_EVENT_RETENTION', value: '2d', key: 'eventRetention', expected: 172_800_000 },
  '--event-retention-count': { env: 'TETHER_EVENT_RETENTION_COUNT', value: '5000', key: 'eventRetentionCount', expected: 5_000 },
  '--log-level': { env: 'TETHER_LOG_LEVEL', value: 'debug', key: 'logLevel', expected: 'debug' },
};

/** The program's global options: the row, and which commands must receive it. */
const GLOBAL_ROWS: Record<string, Row & { isForServe: boolean; isForAdmin: boolean }> = {
  '--server': { env: 'TETHER_SERVER', value: '127.0.0.1:7003, 127.0.0.2:7004', key: 'server', expected: '127.0.0.1:7003,127.0.0.2:7004', isForServe: false, isForAdmin: true },
  '--admin-token-file': { env: 'TETHER_ADMIN_TOKEN_FILE', value: '/run/secrets/admin', key: 'adminTokenFile', expected: '/run/secrets/admin', isForServe: true, isForAdmin: true },
  '--ca-file': { env: 'TETHER_CA_FILE', value: '/etc/tether/ca.pem', key: 'caFile', expected: '/etc/tether/ca.pem', isForServe: false, isForAdmin: true },
  '--data-dir': { env: 'TETHER_DATA_DIR', value: '/var/lib/tether-test', key: 'dataDir', expected: '/var/lib/tether-test', isForServe: true, isForAdmin: true },
};

/** The command-line words that give `row`'s flag. */
function flagArgs(flag: string, row: Row): string[] {
  return row.value === undefined ? [flag] : [flag, row.value];
}

/** The environment that gives `row`'s variable. */
function flagEnv(row: Row): Record<string, string> {
  return { [row.env as string]: row.envValue ?? (row.value as string) };
}

/** Arguments that let `command` reach its action: a placeholder for each required argument, and a payload for `send`. */
function minimalArgs(command: Command): string[] {
  const args = command.registeredArguments.filter((argument) => argument.required).map(() => '1');
  return command.name() === 'send' ? [...args, '--data', 'x'] : args;
}

function serveCommand(program: Command): Command {
  return program.commands.find((command) => command.name() === 'serve') as Command;
}

/** The commands that call no control plane: serve, backup and restore (on the data directory), new-epoch (on a PostgreSQL store), generate-admin-token (on nothing). */
const LOCAL_COMMANDS: readonly string[] = ['serve', 'backup', 'restore', 'new-epoch', 'generate-admin-token'];

/** The admin commands: every leaf but the local ones. */
function adminCommands(program: Command): Command[] {
  return allCommands(program).filter((command) => command.commands.length === 0 && command.parent !== null && !LOCAL_COMMANDS.includes(command.name()));
}

describe('control-plane options take effect', () => {
  const program = controlPlaneProgram();
  const serveOptions = serveCommand(program).options;

  it('has a row for every option serve and the program list, and each row names the option\'s variable', () => {
    expect(serveOptions.map((option) => option.long).sort()).toEqual(Object.keys(SERVE_ROWS).sort());
    expect(program.options.map((option) => option.long).sort()).toEqual(Object.keys(GLOBAL_ROWS).sort());
    for (const option of [...serveOptions, ...program.options]) {
      const row = SERVE_ROWS[option.long as string] ?? GLOBAL_ROWS[option.long as string];
      expect(option.envVar, option.long).toBe(row?.env);
    }
  });

  it('has no environment variable on an option of another command (there is no row to prove it)', () => {
    const others = allCommands(program).filter((command) => command.parent !== null && command.name() !== 'serve');
    const withEnv = others.flatMap((command) => command.options.filter((option: Option) => option.envVar !== undefined).map((option) => `${pathOf(command).join(' ')} ${option.long}`));
    expect(withEnv).toEqual([]);
  });

  it.each(Object.entries(SERVE_ROWS))('serve %s: from the flag and from its variable', async (flag, row) => {
    const defaults = (await resolveCli(['serve'])).serve as unknown as Record<string, unknown>;
    expect(defaults[row.key], 'the row must not test the default').not.toEqual(row.expected);
    const fromFlag = await resolveCli(['serve', ...flagArgs(flag, row)]);
    expect(fromFlag.error).toBeUndefined();
    expect((fromFlag.serve as unknown as Record<string, unknown>)[row.key]).toEqual(row.expected);
    const fromEnv = await resolveCli(['serve'], flagEnv(row));
    expect(fromEnv.error).toBeUndefined();
    expect((fromEnv.serve as unknown as Record<string, unknown>)[row.key]).toEqual(row.expected);
  });

  const serveGlobals = Object.entries(GLOBAL_ROWS).filter(([, row]) => row.isForServe);
  it.each(serveGlobals)('serve takes the global %s before serve, after it, and from its variable', async (flag, row) => {
    for (const [args, env] of [
      [[...flagArgs(flag, row), 'serve'], {}],
      [['serve', ...flagArgs(flag, row)], {}],
      [['serve'], flagEnv(row)],
    ] as [string[], Record<string, string>][]) {
      const outcome = await resolveCli(args, env);
      expect((outcome.serve as unknown as Record<string, unknown> | undefined)?.[row.key], `${args.join(' ')} ${JSON.stringify(env)}`).toEqual(row.expected);
    }
  });

  it('serve --help names the global options it takes', () => {
    const help = serveCommand(controlPlaneProgram()).helpInformation();
    for (const [flag] of serveGlobals) expect(help).toContain(flag);
  });

  const adminGlobals = Object.entries(GLOBAL_ROWS).filter(([, row]) => row.isForAdmin);
  it.each(adminGlobals)('every admin command takes the global %s, before or after its words, and from its variable', async (flag, row) => {
    const commands = adminCommands(controlPlaneProgram());
    expect(commands.length).toBeGreaterThan(10);
    for (const command of commands) {
      const words = [...pathOf(command), ...minimalArgs(command)];
      for (const [args, env] of [
        [[...flagArgs(flag, row), ...words], {}],
        [[...words, ...flagArgs(flag, row)], {}],
        [words, flagEnv(row)],
      ] as [string[], Record<string, string>][]) {
        const outcome = await resolveCli(args, env);
        expect(outcome.error, args.join(' ')).toBeUndefined();
        expect((outcome.client as unknown as Record<string, unknown> | undefined)?.[row.key], `${args.join(' ')} ${JSON.stringify(env)}`).toEqual(row.expected);
      }
    }
  });
});

describe('--server takes a list of addresses', () => {
  it.each([
    ['127.0.0.1:1,', 'address 2 of 2 is empty'],
    ['127.0.0.1:1,nope', 'address 2 of 2 must be host:port'],
    ['127.0.0.1:99999', 'the address has port 99999, not in 1-65535'],
  ])('refuses %j from the flag and from TETHER_SERVER, naming the entry', async (value, message) => {
    for (const [args, env] of [
      [['--server', value, 'agents', 'ls'], {}],
      [['agents', 'ls'], { TETHER_SERVER: value }],
    ] as [string[], Record<string, string>][]) {
      const outcome = await resolveCli(args, env);
      expect(outcome.client).toBeUndefined();
      expect(outcome.error).toContain(`--server: ${message}`);
    }
  });
});

describe('boolean environment variables are parsed strictly', () => {
  it('finds every boolean option with a variable (serve --insecure)', () => {
    expect(booleanEnvOptions(controlPlaneProgram()).map(({ command, option }) => `${pathOf(command).join(' ')} ${option.long}`)).toEqual(['serve --insecure']);
  });

  it.each(booleanEnvOptions(controlPlaneProgram()).map(({ command, option }) => [`${pathOf(command).join(' ')} ${option.long}`, command, option] as const))(
    '%s: true/1/yes, false/0/no and empty; anything else refused, naming the variable and not echoing the value',
    async (_name, command, option) => {
      const words = pathOf(command);
      const key = option.attributeName();
      const envName = option.envVar as string;
      for (const [value, meaning] of BOOLEAN_ENV_VALUES) {
        const outcome = await resolveCli(words, { [envName]: value });
        const config = (outcome.serve ?? outcome.client) as unknown as Record<string, unknown> | undefined;
        if (meaning === undefined) {
          expect(config, JSON.stringify(value)).toBeUndefined();
          expect(outcome.error, JSON.stringify(value)).toContain(envName);
          // The canary stands for a misplaced secret: it must not be echoed.
          expect(outcome.error).not.toContain('canary');
        } else {
          expect(outcome.error, JSON.stringify(value)).toBeUndefined();
          expect(config?.[key] === true, `${envName}=${JSON.stringify(value)}`).toBe(meaning);
        }
      }
      // The command line wins over a variable that says no.
      const both = await resolveCli([...words, option.long as string], { [envName]: 'false' });
      expect(((both.serve ?? both.client) as unknown as Record<string, unknown>)[key]).toBe(true);
    },
  );

  it('the real binary refuses TETHER_INSECURE=maybe before serving', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tether-bool-'));
    try {
      const run = await runControlPlaneCli(['--data-dir', dataDir, 'serve', '--listen', '127.0.0.1:0', '--http-listen', ''], {
        PATH: process.env.PATH ?? '',
        TETHER_ADMIN_TOKEN: 'bool-test-admin-token',
        TETHER_INSECURE: 'maybe',
      });
      expect(run.status).not.toBe(0);
      expect(run.stderr).toContain('TETHER_INSECURE must be one of true, 1, yes, false, 0, no');
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('backup and restore take --data-dir', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('from the flag (before or after the command) and from TETHER_DATA_DIR', async () => {
    const root = mkdtempSync(join(tmpdir(), 'tether-options-'));
    dirs.push(root);
    const source = join(root, 'source');
    mkdirSync(source);
    await SqliteStore.open(databasePath(source)).close();
    const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
    try {
      expect((await resolveCli(['--data-dir', source, 'backup', '--out', join(root, 'a.db')])).error).toBeUndefined();
      expect((await resolveCli(['backup', '--data-dir', source, '--out', join(root, 'b.db')])).error).toBeUndefined();
      expect((await resolveCli(['backup', '--out', join(root, 'c.db')], { TETHER_DATA_DIR: source })).error).toBeUndefined();
      for (const name of ['a.db', 'b.db', 'c.db']) expect(existsSync(join(root, name)), name).toBe(true);
      expect((await resolveCli(['--data-dir', join(root, 'r1'), 'restore', '--from', join(root, 'a.db')])).error).toBeUndefined();
      expect((await resolveCli(['restore', '--data-dir', join(root, 'r2'), '--from', join(root, 'a.db')])).error).toBeUndefined();
      expect((await resolveCli(['restore', '--from', join(root, 'a.db')], { TETHER_DATA_DIR: join(root, 'r3') })).error).toBeUndefined();
      for (const name of ['r1', 'r2', 'r3']) expect(existsSync(databasePath(join(root, name))), name).toBe(true);
    } finally {
      log.mockRestore();
    }
  });
});

describe('control-plane serve --admin-token-file (the real binary)', () => {
  const dirs: string[] = [];
  const closers: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  /** A plaintext admin client of the control plane on `port`. */
  function adminOf(port: number): AdminServiceClient {
    const admin = new AdminServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    closers.push(() => Promise.resolve(admin.close()));
    return admin;
  }

  function listHosts(admin: AdminServiceClient, token: string): Promise<unknown> {
    return call(admin.listHosts.bind(admin), { pageSize: 1, pageToken: '' }, bearer(token));
  }

  it.each([
    ['the flag after serve', (file: string) => ({ args: ['--admin-token-file', file] })],
    ['TETHER_ADMIN_TOKEN_FILE', (file: string) => ({ env: { TETHER_ADMIN_TOKEN_FILE: file } })],
  ])('from %s: accepts the operator\'s token and refuses the one an earlier run generated', async (_how, given) => {
    const root = mkdtempSync(join(tmpdir(), 'tether-admin-file-'));
    dirs.push(root);
    const dataDir = join(root, 'data');
    const tokenFile = join(root, 'admin-token');
    writeFileSync(tokenFile, 'operator-chosen-admin-token-0123456789\n', { mode: 0o600 });
    // Left by an earlier run that had no --admin-token-file: it must not be the token now.
    const earlier = await ControlPlaneProcess.start({ dataDir, adminToken: undefined });
    await earlier.stop();
    const generatedPath = join(dataDir, 'admin-token');
    expect(existsSync(generatedPath)).toBe(true);
    const generated = readFileSync(generatedPath, 'utf8').trim();

    const served = await ControlPlaneProcess.start({ dataDir, adminToken: undefined, ...given(tokenFile) });
    closers.push(() => served.close());
    const admin = adminOf(served.port);
    expect(await statusOf(listHosts(admin, 'operator-chosen-admin-token-0123456789'))).toBe('ok');
    expect(await statusOf(listHosts(admin, generated))).toBe(grpc.status.UNAUTHENTICATED);
  });

  it('generates no admin token into a fresh data directory when given one', async () => {
    const root = mkdtempSync(join(tmpdir(), 'tether-admin-file-'));
    dirs.push(root);
    const dataDir = join(root, 'data');
    const tokenFile = join(root, 'admin-token');
    writeFileSync(tokenFile, 'operator-chosen-admin-token-abcdef\n', { mode: 0o600 });
    const served = await ControlPlaneProcess.start({ dataDir, adminToken: undefined, args: ['--admin-token-file', tokenFile] });
    closers.push(() => served.close());
    expect(await statusOf(listHosts(adminOf(served.port), 'operator-chosen-admin-token-abcdef'))).toBe('ok');
    expect(existsSync(join(dataDir, 'admin-token'))).toBe(false);
  });
});
