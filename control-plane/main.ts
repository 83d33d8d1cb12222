import { Command, Option } from 'commander';
import { EXIT_STATUS_HELP, parseBooleanEnvStrictly, parseCount, parseCountOrAuto, parseCountWithin, parseDurationWithin, parseServerList } from '../common/cli.js';
import { MAX_PAYLOAD_BYTES_CEILING } from '../common/protocol.js';
import type { AdminServiceClient } from '../gen/tether/v1/admin.js';
import { SecretRedactor } from '../common/secrets.js';
import { addAdminCommands, adminClient, type ClientFlags } from './cli/admin-commands.js';
import { addAdminTokenCommand } from './cli/admin-token-command.js';
import { addBackupCommands } from './cli/backup-commands.js';
import { addTokenCommands } from './cli/token-commands.js';
import { MAX_OUTBOX_BYTES_BOUNDS as OUTBOX_BYTES } from './control-plane.js';
import { AUDIT_DEFAULTS, AUDIT_RETENTION_BOUNDS } from './audit/audit-log.js';
import { parseStore, serve, SERVE_DURATION_BOUNDS as BOUNDS, type ServeFlags } from './cli/serve-command.js';
import { DEFAULT_POSTGRES_POOL_SIZE } from './store/postgres-store.js';

/**
 * What the commands of {@link controlPlaneProgram} run, given the configuration
 * they resolved from flags, environment and defaults. Tests pass their own to
 * see that configuration without serving.
 */
export interface ControlPlaneActions {
  serve: (flags: ServeFlags) => Promise<void>;
  /** Opens the admin client the admin commands call through. */
  connectAdmin: (flags: ClientFlags) => AdminServiceClient;
}

/**
 * The configuration `serve` runs with: its own flags and the global ones it
 * uses (`--data-dir`, `--admin-token-file`), wherever on the command line they
 * were given. Reading only its own flags once dropped `--admin-token-file`.
 */
export function serveFlags(command: Command): ServeFlags {
  const globals = command.optsWithGlobals<{ dataDir: string; adminTokenFile?: string }>();
  return {
    ...command.opts<Omit<ServeFlags, 'dataDir' | 'adminTokenFile'>>(),
    dataDir: globals.dataDir,
    ...(globals.adminTokenFile === undefined ? {} : { adminTokenFile: globals.adminTokenFile }),
  };
}

/**
 * Builds the `control-plane` command line. Every secret a command reads is
 * registered with `redactor`, which the caller uses to filter what it prints.
 */
export function controlPlaneProgram(given: Partial<ControlPlaneActions> = {}, redactor = new SecretRedactor()): Command {
  const actions: ControlPlaneActions = {
    serve: (flags) => serve(flags, redactor),
    connectAdmin: (flags) => adminClient(flags, redactor),
    ...given,
  };
  const program = new Command('control-plane')
    .description('Tether control plane: serve it, or administer one over AdminService.')
    .showHelpAfterError()
    .addOption(
      new Option('--server <host:port,...>', 'the control plane admin commands talk to; several comma-separated addresses are tried in a shuffled order until one answers')
        .env('TETHER_SERVER')
        .default('127.0.0.1:7443')
        .argParser(parseServerList),
    )
    .addOption(
      new Option(
        '--admin-token-file <path>',
        'file holding the admin token serve requires and admin commands send (else $TETHER_ADMIN_TOKEN, else <data-dir>/admin-token, which serve generates)',
      ).env(
        'TETHER_ADMIN_TOKEN_FILE',
      ),
    )
    .addOption(new Option('--ca-file <path>', 'CA certificate admin commands verify a TLS control plane with (plaintext otherwise, loopback only)').env('TETHER_CA_FILE'))
    .addOption(new Option('--data-dir <dir>', 'data directory: the store of serve, backup and restore, and the admin token serve generates').env('TETHER_DATA_DIR').default('.tether'));

  program
    .command('serve')
    .description('run the control plane: gRPC on --listen, and HTTP on --http-listen serving the JWKS (/.well-known/jwks.json), /metrics and /healthz; also takes the global --data-dir and --admin-token-file')
    .addOption(new Option('--listen <host:port>', 'gRPC listen address; plaintext only on loopback unless --insecure').env('TETHER_LISTEN').default('127.0.0.1:7443'))
    .addOption(new Option('--http-listen <host:port>', 'HTTP listen address for the JWKS (/.well-known/jwks.json), /metrics (Prometheus) and /healthz; empty for none').env('TETHER_HTTP_LISTEN').default('127.0.0.1:7480'))
    .addOption(new Option('--tls-cert <path>', 'PEM certificate: serve TLS').env('TETHER_TLS_CERT'))
    .addOption(new Option('--tls-key <path>', 'PEM private key of --tls-cert').env('TETHER_TLS_KEY'))
    .addOption(new Option('--insecure', 'allow plaintext on a non-loopback address (TETHER_INSECURE: true/1/yes or false/0/no)').env('TETHER_INSECURE'))
    .addOption(new Option('--agent-token-ttl <duration>', 'agent token lifetime').env('TETHER_AGENT_TOKEN_TTL').default(3_600_000, '1h').argParser(parseDurationWithin('--agent-token-ttl', BOUNDS.agentTokenTtl)))
    .addOption(new Option('--host-token-ttl <duration>', 'host token lifetime').env('TETHER_HOST_TOKEN_TTL').default(259_200_000, '72h').argParser(parseDurationWithin('--host-token-ttl', BOUNDS.hostTokenTtl)))
    .addOption(new Option('--audience-token-ttl <duration>', 'lifetime of tokens minted for other services (never past the agent token)').env('TETHER_AUDIENCE_TOKEN_TTL').default(300_000, '5m').argParser(parseDurationWithin('--audience-token-ttl', BOUNDS.audienceTokenTtl)))
    .addOption(
      new Option('--issuer-url <url>', 'federation: the https:// URL of audience tokens (their iss), signed ES256, with the OpenID discovery document served on the HTTP port (see docs/federation.md)').env(
        'TETHER_ISSUER_URL',
      ),
    )
    .addOption(new Option('--join-token-ttl <duration>', 'default join token lifetime').env('TETHER_JOIN_TOKEN_TTL').default(3_600_000, '1h').argParser(parseDurationWithin('--join-token-ttl', BOUNDS.joinTokenTtl)))
    .addOption(new Option('--clock-tolerance <duration>', 'allowed clock skew on nbf/exp').env('TETHER_CLOCK_TOLERANCE').default(30_000, '30s').argParser(parseDurationWithin('--clock-tolerance', BOUNDS.clockTolerance)))
    .addOption(
      new Option('--lost-host-grace <duration>', 'time without contact after which a host is lost and its ensured agents move (default and least: --agent-token-ttl/3 + --clock-tolerance)')
        .env('TETHER_LOST_HOST_GRACE')
        .argParser(parseDurationWithin('--lost-host-grace', BOUNDS.lostHostGrace)),
    )
    .addOption(new Option('--heartbeat-interval <duration>', 'agent heartbeat interval told to hosts').env('TETHER_HEARTBEAT_INTERVAL').default(30_000, '30s').argParser(parseDurationWithin('--heartbeat-interval', BOUNDS.heartbeatInterval)))
    .addOption(new Option('--keepalive <duration>', 'transport keepalive ping interval towards hosts').env('TETHER_KEEPALIVE').default(30_000, '30s').argParser(parseDurationWithin('--keepalive', BOUNDS.keepalive)))
    .addOption(
      new Option('--shutdown-grace <duration>', 'on SIGTERM: health reports NOT_SERVING, calls in flight get this long to finish, then the rest are cut')
        .env('TETHER_SHUTDOWN_GRACE')
        .default(10_000, '10s')
        .argParser(parseDurationWithin('--shutdown-grace', BOUNDS.shutdownGrace)),
    )
    .addOption(
      new Option(
        '--max-rotations-per-second <n|auto>',
        'cap on credential signing rate; storms are smoothed, not dropped. auto: 2 × agents / (0.55 × agent TTL), at least 200; a number below that need is honoured with a warning logged',
      )
        .env('TETHER_MAX_ROTATIONS_PER_SECOND')
        .default('auto')
        .argParser(parseCountOrAuto),
    )
    .addOption(new Option('--max-concurrent-hellos <n>', 'host Hellos processed at once; the excess is told to retry later (RESOURCE_EXHAUSTED with a retry-after)').env('TETHER_MAX_CONCURRENT_HELLOS').default(32).argParser(parseCountWithin('--max-concurrent-hellos', 1, 10_000)))
    .addOption(new Option('--delivery-window <n>', 'unacknowledged deliveries per agent').env('TETHER_DELIVERY_WINDOW').default(32).argParser(parseCount))
    .addOption(new Option('--max-delivery-attempts <n>', 'refusals after which a message is dead-lettered').env('TETHER_MAX_DELIVERY_ATTEMPTS').default(5).argParser(parseCount))
    .addOption(new Option('--max-outbox-messages <n>', 'unacknowledged or dead-lettered messages per agent before sends get RESOURCE_EXHAUSTED').env('TETHER_MAX_OUTBOX_MESSAGES').default(10_000).argParser(parseCount))
    .addOption(new Option('--max-outbox-bytes <n>', `payload bytes of unacknowledged or dead-lettered messages per agent before sends get RESOURCE_EXHAUSTED (${OUTBOX_BYTES.min} to ${OUTBOX_BYTES.max}, at least --max-payload-bytes)`).env('TETHER_MAX_OUTBOX_BYTES').default(67_108_864, '64 MiB').argParser(parseCountWithin('--max-outbox-bytes', OUTBOX_BYTES.min, OUTBOX_BYTES.max)))
    .addOption(new Option('--max-payload-bytes <n>', `largest message payload accepted (at most ${MAX_PAYLOAD_BYTES_CEILING}: a delivery must fit a host's 4 MiB receive limit)`).env('TETHER_MAX_PAYLOAD_BYTES').default(1_048_576).argParser(parseCountWithin('--max-payload-bytes', 1, MAX_PAYLOAD_BYTES_CEILING)))
    .addOption(
      new Option(
        '--store <sqlite|postgres://…>',
        'where the state lives: sqlite (the embedded store, <data-dir>/tether.db) or a PostgreSQL connection string (postgres://user[:password]@host:port/db; ?options=-c%20search_path%3D<schema> picks a schema); with PostgreSQL pass the admin token in TETHER_ADMIN_TOKEN(_FILE)',
      )
        .env('TETHER_STORE')
        .default('sqlite')
        .argParser(parseStore),
    )
    .addOption(
      new Option('--store-pool-size <n>', 'PostgreSQL store: connections at most (each one a server process: keep control planes × this below max_connections)')
        .env('TETHER_STORE_POOL_SIZE')
        .default(DEFAULT_POSTGRES_POOL_SIZE)
        .argParser(parseCountWithin('--store-pool-size', 1, 1_000)),
    )
    .addOption(
      new Option('--audit-max-age <duration>', 'audit records older than this are pruned (1m to 10y)')
        .env('TETHER_AUDIT_MAX_AGE')
        .default(AUDIT_DEFAULTS.maxAgeMs, '90d')
        .argParser(parseDurationWithin('--audit-max-age', BOUNDS.auditMaxAge)),
    )
    .addOption(
      new Option('--audit-max-records <n>', `audit records kept at most, the oldest pruned first (${AUDIT_RETENTION_BOUNDS.maxRecords.min} to ${AUDIT_RETENTION_BOUNDS.maxRecords.max})`)
        .env('TETHER_AUDIT_MAX_RECORDS')
        .default(AUDIT_DEFAULTS.maxRecords)
        .argParser(parseCountWithin('--audit-max-records', AUDIT_RETENTION_BOUNDS.maxRecords.min, AUDIT_RETENTION_BOUNDS.maxRecords.max)),
    )
    .addOption(new Option('--event-retention <duration>', 'how long lifecycle events (`watch`) are kept').env('TETHER_EVENT_RETENTION').default(604_800_000, '7d').argParser(parseDurationWithin('--event-retention', BOUNDS.eventRetention)))
    .addOption(new Option('--event-retention-count <n>', 'how many lifecycle events are kept at most (the oldest go first)').env('TETHER_EVENT_RETENTION_COUNT').default(100_000).argParser(parseCountWithin('--event-retention-count', 1, 100_000_000)))
    .addOption(new Option('--log-level <level>', 'trace, debug, info, warn, error').env('TETHER_LOG_LEVEL').default('info'))
    .action(async (_flags: unknown, command: Command) => {
      await actions.serve(serveFlags(command));
    });

  addAdminCommands(program, redactor, actions.connectAdmin);
  addTokenCommands(program, redactor, actions.connectAdmin);
  addBackupCommands(program);
  addAdminTokenCommand(program);
  addExitStatusHelp(program);
  return parseBooleanEnvStrictly(program);
}

/** Adds the exit statuses to the help of `program` and of each of its commands. */
function addExitStatusHelp(program: Command): void {
  const pending = [program];
  for (let command = pending.pop(); command !== undefined; command = pending.pop()) {
    command.addHelpText('after', `\n${EXIT_STATUS_HELP}`);
    pending.push(...command.commands);
  }
}
