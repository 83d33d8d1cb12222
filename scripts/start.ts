/**
 * `npm start`: a control plane and one agent host in this process, on the
 * embedded SQLite store in a local data directory, with a demo agent whose
 * short-lived token is rotated down the stream. Prints what to try next.
 *
 * Environment: TETHER_DATA_DIR (default .tether), TETHER_LISTEN (default
 * 127.0.0.1:7443), TETHER_HTTP_LISTEN (default 127.0.0.1:7480),
 * TETHER_AGENT_TOKEN_TTL (default 1h; try 2m to watch rotations), TETHER_LOG_LEVEL.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { AgentHost } from '../agent-host/agent-host.js';
import { FileHostCredentialStore } from '../agent-host/host-credential-store.js';
import { builtinModules } from '../agent-host/modules/builtin-modules.js';
import { bearerInterceptor } from '../agent-host/tools/call-credentials.js';
import { SystemClock } from '../common/clock.js';
import { parseDurationMs } from '../common/cli.js';
import { createLogger } from '../common/logger.js';
import { resolveAdminToken } from '../control-plane/cli/serve-command.js';
import { ControlPlane } from '../control-plane/control-plane.js';
import { claimDatabase } from '../control-plane/store/sqlite-backup.js';
import { databasePath, SqliteStore } from '../control-plane/store/sqlite-store.js';
import { AdminServiceClient } from '../gen/tether/v1/admin.js';
import { tryCommands } from './try-commands.js';

function unary<Req, Res>(
  method: (request: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, callback: (err: grpc.ServiceError | null, res: Res) => void) => grpc.ClientUnaryCall,
  request: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, new grpc.Metadata(), {}, (err, res) => (err === null ? resolve(res) : reject(err)));
  });
}

async function main(): Promise<void> {
  const dataDir = process.env.TETHER_DATA_DIR ?? '.tether';
  const listen = process.env.TETHER_LISTEN ?? '127.0.0.1:7443';
  const httpListen = process.env.TETHER_HTTP_LISTEN ?? '127.0.0.1:7480';
  const agentTokenTtlMs = parseDurationMs(process.env.TETHER_AGENT_TOKEN_TTL ?? '1h');
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const logPath = join(dataDir, 'tether.log');
  const logger = createLogger({
    level: (process.env.TETHER_LOG_LEVEL ?? 'info') as 'info',
    destination: pino.destination({ dest: logPath, mkdir: true, sync: false }),
  });
  const clock = new SystemClock();
  const adminToken = await resolveAdminToken({ dataDir }, logger);
  const dbPath = databasePath(dataDir);
  const store = SqliteStore.open(dbPath);
  const { release } = claimDatabase(dbPath);
  const controlPlane = await ControlPlane.start({
    store,
    clock,
    logger: logger.child({ service: 'control-plane' }),
    adminToken,
    address: listen,
    httpAddress: httpListen,
    agentTokenTtlMs,
  });
  const target = `127.0.0.1:${controlPlane.port}`;
  const admin = new AdminServiceClient(target, grpc.credentials.createInsecure(), {
    interceptors: [bearerInterceptor({ get: () => adminToken })],
  });

  const credentialStore = new FileHostCredentialStore(join(dataDir, 'host'));
  let joinToken: string | undefined;
  if ((await credentialStore.load()) === undefined) {
    joinToken = (await unary(admin.enrollHost.bind(admin), { name: 'local', joinTtlMs: 0 })).joinToken;
  }
  const host = AgentHost.start({
    target,
    clock,
    logger: logger.child({ service: 'agent-host' }),
    credentialStore,
    ...(joinToken === undefined ? {} : { joinToken }),
    modules: builtinModules(),
    capacity: 100,
  });
  await new Promise<void>((resolve, reject) => {
    host.events.once('connected', () => resolve());
    host.events.once('refused', ({ refusal, details }) => reject(new Error(`the host was refused (${refusal}): ${details}; remove ${dataDir}/host to enroll again`)));
  });
  await unary(admin.ensureAgent.bind(admin), {
    agentId: 'demo-agent',
    name: 'demo',
    hostId: host.hostId,
    hostLabels: [],
    spec: { kind: 'module', module: 'demo', command: '', args: [], config: '' },
    // The demo agent is what this script says it is, on this host, even in a data directory from before.
    update: true,
  });

  const lines = [
    '',
    `Tether is running: control plane on ${target} (JWKS at http://127.0.0.1:${controlPlane.httpPort}/.well-known/jwks.json),`,
    `one agent host (${host.hostId}) and the agent demo-agent. Data in ${dataDir}/, logs in ${logPath}.`,
    '',
    'Try, with the CLI:',
    `  $ TETHER_SERVER=${target} npm run -s control-plane -- agents ls`,
    `  $ TETHER_SERVER=${target} npm run -s control-plane -- agents describe demo-agent`,
    `  $ TETHER_SERVER=${target} npm run -s control-plane -- agents rotate demo-agent`,
    '',
  ];
  const commands = tryCommands(target, dataDir);
  lines.push('With buf curl (installed with the project):');
  for (const command of commands) lines.push(`  # ${command.title}`, `  $ ${command.bufCurl}`);
  lines.push('', 'With grpcurl:');
  for (const command of commands) lines.push(`  # ${command.title}`, `  $ ${command.grpcurl}`);
  lines.push('', 'Ctrl-C stops everything.', 'tether: ready');
  console.log(lines.join('\n'));

  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  await host.close();
  admin.close();
  await controlPlane.close();
  await store.close();
  release();
  logger.flush();
}

main().catch((err: unknown) => {
  console.error(`npm start: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
