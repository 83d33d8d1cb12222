import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { Command, Option, InvalidArgumentError as CommanderInvalidArgument } from 'commander';
import type { Registry } from 'prom-client';
import { SystemClock } from '../common/clock.js';
import { collect, collectLabel, parseBooleanEnvStrictly, parseCount, parseServerList, parseDurationWithin, HANDLER_DEADLINE_BOUNDS, readSecret, type DurationBounds } from '../common/cli.js';
import { createLogger, type Logger } from '../common/logger.js';
import { SecretRedactor } from '../common/secrets.js';
import { serveMetrics } from '../common/metrics-http.js';
import { WatchedCertificates } from '../common/watched-certificates.js';
import type { Label } from '../gen/tether/v1/common.js';
import { AgentHost } from './agent-host.js';
import { prepareAgentsDirectory } from './agents-directory.js';
import { FileHostCredentialStore } from './host-credential-store.js';
import { stopStaleAgents } from './stale-agents.js';
import { createHostMetrics } from './metrics.js';
import { builtinModules } from './modules/builtin-modules.js';
import type { AgentModule } from './tools/agent-module.js';

/**
 * The range of each duration flag of `agent-host`: a stop grace of 0 kills at
 * once (allowed); a keepalive faster than a second floods the control plane;
 * a stop deadline under a second abandons agents that were about to let go;
 * nothing is meant to wait longer than the ceilings.
 */
export const HOST_DURATION_BOUNDS = {
  stopGrace: { minMs: 0, maxMs: 3_600_000 },
  stopDeadline: { minMs: 1_000, maxMs: 3_600_000 },
  keepalive: { minMs: 1_000, maxMs: 2 * 3_600_000 },
  stallAfter: { minMs: 0, maxMs: 24 * 3_600_000 },
  handlerDeadline: HANDLER_DEADLINE_BOUNDS,
  drainTimeout: { minMs: 0, maxMs: 24 * 3_600_000 },
} as const satisfies Record<string, DurationBounds>;

/** Flags of `agent-host`. */
export interface HostFlags {
  server: string;
  dataDir: string;
  joinTokenFile?: string;
  caFile?: string;
  capacity: number;
  label?: Label[];
  module?: string[];
  allowCommand?: string[];
  agentsDir?: string;
  stopGrace: number;
  stopDeadline: number;
  keepalive: number;
  stallAfter: number;
  handlerDeadline: number;
  drainTimeout: number;
  metricsListen: string;
  logLevel: string;
}

/** Loads `name=path` modules: each file's named export `agent` is an AgentModule. */
async function loadModules(specs: readonly string[]): Promise<Map<string, AgentModule>> {
  const modules = builtinModules();
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    if (eq <= 0) throw new CommanderInvalidArgument(`--module is name=path, got ${spec}`);
    const name = spec.slice(0, eq);
    const loaded = (await import(pathToFileURL(resolve(spec.slice(eq + 1))).href)) as { agent?: unknown };
    if (typeof loaded.agent !== 'function') throw new Error(`${spec.slice(eq + 1)} has no exported function \`agent\``);
    modules.set(name, loaded.agent as AgentModule);
  }
  return modules;
}

/**
 * Runs a host until SIGINT/SIGTERM (exit 0) or a final refusal (exit 2). A
 * malformed join token or stored credential is an error before anything
 * starts (exit 1), or, if the stored one goes bad later, ends the host (exit 1).
 */
export async function runHost(flags: HostFlags, redactor: SecretRedactor): Promise<void> {
  const logger = createLogger({ level: flags.logLevel as 'info', base: { service: 'agent-host' }, redactor });
  const credentialStore = new FileHostCredentialStore(flags.dataDir, redactor);
  const joinToken = readSecret(flags.joinTokenFile, 'TETHER_JOIN_TOKEN', redactor);
  if ((await credentialStore.load()) === undefined && joinToken === undefined) {
    throw new Error(`no host credential in ${flags.dataDir} and no join token: enroll with \`control-plane hosts enroll NAME\` and pass the token via $TETHER_JOIN_TOKEN or --join-token-file`);
  }
  const agentsDir = resolve(flags.agentsDir ?? join(flags.dataDir, 'agents'));
  // Checked (or created) before connecting: a shared directory is refused at start, not at the first process agent.
  if ((flags.allowCommand ?? []).length > 0) {
    await prepareAgentsDirectory(agentsDir);
    // Nothing runs here yet: whatever an earlier run left (it was killed) may now live elsewhere, and must not act.
    await stopStaleAgents(agentsDir, logger);
  }
  const clock = new SystemClock();
  // Watched: a CA file replaced (a certificate rotated to a new CA) is used by the next connections, without a restart.
  const ca = flags.caFile === undefined ? undefined : WatchedCertificates.open({ caFile: flags.caFile, clock, logger: logger.child({ component: 'tls' }) });
  let host: AgentHost;
  try {
    host = startHost(flags, clock, logger, credentialStore, joinToken, ca, await loadModules(flags.module ?? []), agentsDir);
  } catch (err) {
    await ca?.close();
    throw err;
  }
  try {
    await runUntilDone(host, flags, logger, redactor);
  } finally {
    await ca?.close();
  }
}

/** Starts the host `flags` describe. */
function startHost(
  flags: HostFlags,
  clock: SystemClock,
  logger: Logger,
  credentialStore: FileHostCredentialStore,
  joinToken: string | undefined,
  ca: WatchedCertificates | undefined,
  modules: Map<string, AgentModule>,
  agentsDir: string,
): AgentHost {
  return AgentHost.start({
    target: flags.server,
    clock,
    logger,
    credentialStore,
    ...(joinToken === undefined ? {} : { joinToken }),
    ...(ca === undefined ? {} : { channelCredentials: grpc.experimental.createCertificateProviderChannelCredentials(ca, null) }),
    modules,
    allowedCommands: flags.allowCommand ?? [],
    agentsDir,
    stopGraceMs: flags.stopGrace,
    stopDeadlineMs: flags.stopDeadline,
    stallAfterMs: flags.stallAfter,
    handlerDeadlineMs: flags.handlerDeadline,
    ...(flags.caFile === undefined ? {} : { caFile: resolve(flags.caFile) }),
    capacity: flags.capacity,
    labels: flags.label ?? [],
    keepaliveTimeMs: flags.keepalive,
  });
}

/** Serves metrics if asked, drains at the first signal, and waits for the host to end; sets the exit status. */
async function runUntilDone(host: AgentHost, flags: HostFlags, logger: Logger, redactor: SecretRedactor): Promise<void> {
  let metrics: { registry: Registry; close: () => void; server: { port: number; close: () => Promise<void> } } | undefined;
  if (flags.metricsListen !== '') {
    const { registry, close } = createHostMetrics(host);
    try {
      metrics = { registry, close, server: await serveMetrics(registry, flags.metricsListen, logger) };
    } catch (err) {
      close();
      await host.close();
      throw err;
    }
    logger.info({ port: metrics.server.port }, 'metrics serving at /metrics');
  }
  // Reported at once, as the control plane says it: an agent it cannot hand over while this host drains.
  const reported = new Set<string>();
  const report = (agentId: string, reason: string): void => {
    if (reported.has(agentId)) return;
    reported.add(agentId);
    logger.error({ agentId, reason }, 'agent not handed over: it is stopped when the host exits');
    console.error(`agent-host: agent ${agentId} not handed over: ${redactor.redact(reason)}`);
  };
  host.events.on('drain-update', ({ agentId, outcome, reason }) => report(agentId, `${outcome}: ${reason}`));
  const cutShort = new AbortController();
  let signals = 0;
  const shutdown = async (): Promise<void> => {
    if (flags.drainTimeout > 0) {
      const { handedOver, notHandedOver } = await host.drain(flags.drainTimeout, cutShort.signal);
      for (const { agentId, reason } of notHandedOver) report(agentId, reason);
      logger.info({ handedOver, notHandedOver: notHandedOver.length }, 'drain over');
    }
    await host.close();
  };
  const stop = (signal: string): void => {
    signals++;
    if (signals > 1) {
      // A second signal: no more waiting for hand-overs; the agents left are stopped now.
      logger.warn({ signal }, 'second signal: stopping the agents left without waiting');
      cutShort.abort();
      return;
    }
    logger.info({ signal, drainTimeoutMs: flags.drainTimeout }, 'shutting down: draining first');
    // A failure here surfaces again (and is reported) where the close below is awaited.
    shutdown().catch((err: unknown) => {
      logger.error({ err }, 'shutdown failed');
      host.close().catch(() => undefined);
    });
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const exit = await host.done;
  await host.close();
  await metrics?.server.close();
  metrics?.close();
  process.off('SIGINT', stop);
  process.off('SIGTERM', stop);
  logger.flush();
  if (exit.fault !== undefined) {
    console.error(`agent-host: ${redactor.redact(exit.fault)}`);
    process.exitCode = 1;
  } else if (exit.refusal !== undefined) {
    console.error(`agent-host: the control plane refused this host for good (${exit.refusal}): ${redactor.redact(exit.details ?? '')}`);
    process.exitCode = 2;
  }
}

/**
 * Builds the `agent-host` command line; its action runs `run` (a test passes
 * its own to see the configuration the flags resolve to). Every secret it
 * reads is registered with `redactor`, which the caller uses to filter what it
 * prints.
 */
export function agentHostProgram(run?: (flags: HostFlags) => Promise<void>, redactor = new SecretRedactor()): Command {
  const program = new Command('agent-host')
    .description('Tether agent host: keeps one stream to the control plane and runs the agents it is given.')
    .showHelpAfterError()
    .addOption(
      new Option('--server <host:port,...>', 'the control plane; several comma-separated addresses are tried in a shuffled order, the next at once when one fails')
        .env('TETHER_SERVER')
        .default('127.0.0.1:7443')
        .argParser(parseServerList),
    )
    .addOption(new Option('--data-dir <dir>', "where the host keeps its own credential (0600)").env('TETHER_HOST_DATA_DIR').default('.tether/host'))
    .addOption(new Option('--join-token-file <path>', 'file holding the one-time join token (else $TETHER_JOIN_TOKEN); needed only on first start').env('TETHER_JOIN_TOKEN_FILE'))
    .addOption(new Option('--ca-file <path>', 'CA certificate to verify a TLS control plane (plaintext otherwise, loopback only)').env('TETHER_CA_FILE'))
    .addOption(new Option('--capacity <n>', 'agents this host runs at most; 0 for no limit').env('TETHER_CAPACITY').default(100).argParser(parseCount))
    .option('--label <key=value>', 'a label agents can be placed by (repeatable)', collectLabel)
    .option('--module <name=path>', 'register a module agent: the file exports `agent` (repeatable); `demo` and `idle` are built in', collect)
    .option('--allow-command <path>', 'a command process agents may run (repeatable; none by default)', collect)
    .addOption(new Option('--agents-dir <dir>', 'where each process agent gets its own 0700 directory (default: <data-dir>/agents); created 0700 if missing, refused if writable by group or others or not ours').env('TETHER_AGENTS_DIR'))
    .addOption(new Option('--stop-grace <duration>', 'how long a process agent has between SIGTERM and SIGKILL').env('TETHER_STOP_GRACE').default(10_000, '10s').argParser(parseDurationWithin('--stop-grace', HOST_DURATION_BOUNDS.stopGrace)))
    .addOption(
      new Option('--stop-deadline <duration>', 'how long stopping an agent may take before the host abandons it (kills a process group, fences a module off)')
        .env('TETHER_STOP_DEADLINE')
        .default(30_000, '30s')
        .argParser(parseDurationWithin('--stop-deadline', HOST_DURATION_BOUNDS.stopDeadline)),
    )
    .addOption(
      new Option('--stall-after <duration>', 'report a process agent stalled when its liveness probe goes unanswered this long (a signal, not a kill); 0 to not probe')
        .env('TETHER_STALL_AFTER')
        .default(30_000, '30s')
        .argParser(parseDurationWithin('--stall-after', HOST_DURATION_BOUNDS.stallAfter)),
    )
    .addOption(
      new Option('--handler-deadline <duration>', "report an agent stalled while it holds one message this long, from its handler's start; 0 for none")
        .env('TETHER_HANDLER_DEADLINE')
        .default(15 * 60_000, '15m')
        .argParser(parseDurationWithin('--handler-deadline', HOST_DURATION_BOUNDS.handlerDeadline)),
    )
    .addOption(
      new Option(
        '--drain-timeout <duration>',
        'at SIGTERM/SIGINT, how long to wait for the control plane to hand every agent over to other hosts before stopping the rest and exiting; 0 to stop at once',
      )
        .env('TETHER_DRAIN_TIMEOUT')
        .default(5 * 60_000, '5m')
        .argParser(parseDurationWithin('--drain-timeout', HOST_DURATION_BOUNDS.drainTimeout)),
    )
    .addOption(new Option('--keepalive <duration>', 'transport keepalive ping interval').env('TETHER_KEEPALIVE').default(30_000, '30s').argParser(parseDurationWithin('--keepalive', HOST_DURATION_BOUNDS.keepalive)))
    .addOption(
      new Option('--metrics-listen <host:port>', 'serve Prometheus metrics at http://<host:port>/metrics; empty for none')
        .env('TETHER_HOST_METRICS_LISTEN')
        .default(''),
    )
    .addOption(new Option('--log-level <level>', 'trace, debug, info, warn, error').env('TETHER_LOG_LEVEL').default('info'))
    .action(async (flags: HostFlags) => {
      await (run ?? ((given: HostFlags) => runHost(given, redactor)))(flags);
    });
  return parseBooleanEnvStrictly(program);
}
