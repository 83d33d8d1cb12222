import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError as CommanderInvalidArgument, type Command } from 'commander';
import { CliError, collectLabel, describeStatus, EXIT, exitCodeForStatus, parseCount, parseDurationMs, parseDurationWithin, HANDLER_DEADLINE_BOUNDS, readSecret, UsageError } from '../../common/cli.js';
import { parseAudienceFile, type AudienceFileSpec } from '../../common/audience-files.js';
import { FailoverChannel } from '../../common/failover-channel.js';
import { assertPlaintextAllowed } from '../../common/loopback.js';
import { parseServerAddresses } from '../../common/server-addresses.js';
import { parseSecret, type SecretRedactor } from '../../common/secrets.js';
import { AdminServiceClient, type AgentInfo, type AgentTransition, type DrainAgentInfo, type HostInfo, type MessageInfo, type SigningKeyInfo } from '../../gen/tether/v1/admin.js';
import type { AgentState, Label } from '../../gen/tether/v1/common.js';
import { addOutputOption, agentStateWord, cliJson, isoOrNull, labelsCell, printList, printObject, printTable, timeCell, type Column, type OutputFormat } from './output.js';
import { SecretOutputFile } from './secret-output-file.js';
import { addWatchCommand } from './watch-command.js';
import { jwksDocument } from '../tokens/jwk-message.js';

/** Flags every admin subcommand shares (the program's global options). */
export interface ClientFlags {
  server: string;
  adminTokenFile?: string;
  caFile?: string;
  dataDir: string;
}

/** A promisified unary call of the generated client. */
type Unary<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (err: grpc.ServiceError | null, response: Res) => void,
) => grpc.ClientUnaryCall;

/** Calls a unary method of the admin client (30 s deadline). */
export function invoke<Req, Res>(method: Unary<Req, Res>, request: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, new grpc.Metadata(), { deadline: new Date(performance.timeOrigin + performance.now() + 30_000) }, (err, response) =>
      err === null ? resolve(response) : reject(err),
    );
  });
}

function adminToken(flags: ClientFlags, redactor: SecretRedactor): string {
  const token = readSecret(flags.adminTokenFile, 'TETHER_ADMIN_TOKEN', redactor);
  if (token !== undefined) return token;
  const fallback = join(flags.dataDir, 'admin-token');
  if (existsSync(fallback)) {
    const raw = readFileSync(fallback, 'utf8');
    redactor.register(raw);
    return parseSecret(raw, fallback);
  }
  throw new UsageError('no admin token: give --admin-token-file (or TETHER_ADMIN_TOKEN_FILE, or TETHER_ADMIN_TOKEN), or --data-dir of a control plane that generated one');
}

/** An admin client for `flags`: their server, their CA (plaintext on loopback only without one), their admin token. */
export function adminClient(flags: ClientFlags, redactor: SecretRedactor): AdminServiceClient {
  const token = adminToken(flags, redactor);
  const credentials =
    flags.caFile === undefined ? grpc.credentials.createInsecure() : grpc.credentials.createSsl(readFileSync(flags.caFile));
  const addresses = parseServerAddresses(flags.server);
  if (flags.caFile === undefined) assertPlaintextAllowed(flags.server);
  const interceptor: grpc.Interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        next(metadata, listener);
      },
    });
  // One channel per address; the command's calls go to the first (in a shuffled order) that connects.
  const channel = new FailoverChannel({
    addresses,
    makeChannel: (address) => new grpc.Channel(address, credentials, { 'grpc.use_local_subchannel_pool': 1 }),
    random: Math.random,
  });
  return new AdminServiceClient(flags.server, credentials, { interceptors: [interceptor], channelOverride: channel });
}

/** How long the CLI gives each of several addresses to connect before trying the next. */
const CONNECT_PER_ADDRESS_MS = 10_000;

/** Every item of a paginated list, page after page (bounded). */
export async function listAll<T>(fetch: (pageToken: string) => Promise<{ items: T[]; nextPageToken: string }>): Promise<T[]> {
  const found: T[] = [];
  let pageToken = '';
  for (let page = 0; page < 100_000; page++) {
    const response = await fetch(pageToken);
    found.push(...response.items);
    pageToken = response.nextPageToken;
    if (pageToken === '') break;
  }
  return found;
}

/** The state of an agent in a table: its word, `-` for none. */
function stateCell(state: AgentState): string {
  return agentStateWord(state) ?? '-';
}

/**
 * Runs `body` with an admin client for the command's flags; a gRPC error
 * becomes one line saying what happened and what to do (no gRPC noise) and the
 * exit status of its code ({@link exitCodeForStatus}). The details are filtered
 * by the redactor: a status grpc-js makes up on the client side can quote a
 * header value.
 */
export type WithClient = (command: Command, body: (admin: AdminServiceClient) => Promise<void>) => Promise<void>;

/** A {@link WithClient} that opens its clients with `connect`. */
export function clientRunner(connect: (flags: ClientFlags) => AdminServiceClient, redactor: SecretRedactor): WithClient {
  return async (command, body) => {
    const flags = command.optsWithGlobals<ClientFlags>();
    const admin = connect(flags);
    try {
      const channel = admin.getChannel();
      // Several addresses: settle on one that connects before the first call (none: the calls fail UNAVAILABLE as with one).
      if (channel instanceof FailoverChannel && channel.addresses.length > 1) await channel.connect(CONNECT_PER_ADDRESS_MS);
      await body(admin);
    } catch (err) {
      const serviceError = err as Partial<grpc.ServiceError>;
      if (typeof serviceError.code === 'number') {
        console.error(`error: ${describeStatus(serviceError.code, redactor.redact(serviceError.details ?? ''), flags.server)}`);
        process.exitCode = exitCodeForStatus(serviceError.code);
        return;
      }
      throw err;
    } finally {
      admin.close();
    }
  };
}

/** The output format a command was given (`-o`). */
export function formatOf(flags: { output?: string }): OutputFormat {
  return (flags.output ?? 'table') as OutputFormat;
}

/** What `dispatch`, `ensure` and `stop` show of the agent in a table. */
function agentRows(agent: AgentInfo): [string, string][] {
  return [
    ['AGENT', agent.agentId],
    ['STATE', stateCell(agent.state)],
    ['DETAIL', agent.detail || '-'],
    ['HOST', agent.hostId || '-'],
    ['INCARNATION', String(agent.incarnation)],
    ['RESTART_POLICY', agent.restartPolicy || 'never'],
  ];
}

/** The columns of `agents ls` (and of the agents `hosts describe` shows). */
const AGENT_COLUMNS: Column<AgentInfo>[] = [
  { header: 'AGENT', cell: (a) => a.agentId },
  { header: 'NAME', cell: (a) => a.name || '-', isWide: true },
  { header: 'STATE', cell: (a) => stateCell(a.state) },
  { header: 'HOST', cell: (a) => a.hostId || '-' },
  { header: 'INCARNATION', cell: (a) => String(a.incarnation) },
  { header: 'RESTARTS', cell: (a) => String(a.restarts) },
  { header: 'RESTART_POLICY', cell: (a) => a.restartPolicy || 'never', isWide: true },
  { header: 'GENERATION', cell: (a) => String(a.generation) },
  { header: 'TOKEN_EXPIRES', cell: (a) => timeCell(a.expiresAtMs) },
  { header: 'HELD_GENERATION', cell: (a) => (a.ackedGeneration === 0 ? '-' : String(a.ackedGeneration)), isWide: true },
  { header: 'HELD_EXPIRES', cell: (a) => timeCell(a.ackedExpiresAtMs), isWide: true },
  { header: 'LAST_HEARTBEAT', cell: (a) => timeCell(a.lastHeartbeatMs) },
  { header: 'DETAIL', cell: (a) => a.detail || '-', isWide: true },
];

/** The columns of `hosts ls`. */
const HOST_COLUMNS: Column<HostInfo>[] = [
  { header: 'HOST', cell: (h) => h.hostId },
  { header: 'NAME', cell: (h) => h.name || '-', isWide: true },
  { header: 'STATE', cell: (h) => h.state },
  { header: 'CONNECTED', cell: (h) => String(h.connected) },
  { header: 'SCHEDULABLE', cell: (h) => String(h.schedulable) },
  { header: 'DRAIN', cell: (h) => h.drainState || '-' },
  { header: 'AGENTS', cell: (h) => String(h.agents) },
  { header: 'CAPACITY', cell: (h) => String(h.capacity) },
  { header: 'LABELS', cell: (h) => labelsCell(h.labels), isWide: true },
  { header: 'LAST_SEEN', cell: (h) => timeCell(h.lastSeenMs) },
  { header: 'SKEW_MS', cell: (h) => String(h.clockSkewMs), isWide: true },
  { header: 'CREDENTIAL_GENERATION', cell: (h) => String(h.credentialGeneration), isWide: true },
  { header: 'CREDENTIAL_EXPIRES', cell: (h) => timeCell(h.credentialExpiresAtMs) },
];

interface SpecFlags {
  module?: string;
  command?: string;
  arg?: string[];
  config?: string;
  name?: string;
  host?: string;
  label?: Label[];
  restart?: string;
  audienceFile?: AudienceFileSpec[];
  handlerDeadline?: number;
}

function dispatchRequest(agentId: string, flags: SpecFlags): {
  agentId: string;
  name: string;
  hostId: string;
  hostLabels: Label[];
  spec: { kind: string; module: string; command: string; args: string[]; config: string; audienceFiles?: { files: AudienceFileSpec[] }; handlerDeadlineMs?: number };
  restartPolicy?: string;
} {
  if ((flags.module === undefined) === (flags.command === undefined)) throw new UsageError('give exactly one of --module or --command');
  if (flags.restart !== undefined && !['never', 'on-failure', 'always'].includes(flags.restart)) {
    throw new UsageError('--restart must be one of never, on-failure, always');
  }
  return {
    ...(flags.restart === undefined ? {} : { restartPolicy: flags.restart }),
    agentId,
    name: flags.name ?? '',
    hostId: flags.host ?? '',
    hostLabels: flags.label ?? [],
    spec: {
      kind: flags.module === undefined ? 'process' : 'module',
      module: flags.module ?? '',
      command: flags.command ?? '',
      args: flags.arg ?? [],
      config: flags.config ?? '',
      ...(flags.audienceFile === undefined ? {} : { audienceFiles: { files: flags.audienceFile } }),
      ...(flags.handlerDeadline === undefined ? {} : { handlerDeadlineMs: flags.handlerDeadline }),
    },
  };
}

function addSpecOptions(command: Command): Command {
  return command
    .option('--module <name>', 'run a module agent registered on the host under this name')
    .option('--command <path>', 'run a process agent (the host must allow the command)')
    .option('--arg <value>', 'an argument of the command (repeatable)', (v: string, p: string[] = []) => [...p, v])
    .option('--config <json>', 'configuration handed to the agent')
    .option('--name <name>', 'a display name')
    .option('--host <host-id>', 'place on this host')
    .option('--label <key=value>', 'place on a host carrying this label (repeatable)', collectLabel)
    .option(
      '--audience-file <name=audience>',
      'process agents: keep a token for this audience in <agent dir>/tokens/NAME, its path in TETHER_AUDIENCE_FILE_<NAME> (repeatable; see docs/federation.md)',
      (value: string, previous: AudienceFileSpec[] = []) => {
        try {
          return [...previous, parseAudienceFile(value)];
        } catch (err) {
          throw new CommanderInvalidArgument(err instanceof Error ? err.message : String(err));
        }
      },
    )
    .option(
      '--handler-deadline <duration>',
      "this agent's own --handler-deadline: how long it may hold one message before its host reports it stalled (0: never; 0–7d; default: its host's)",
      parseDurationWithin('--handler-deadline', HANDLER_DEADLINE_BOUNDS),
    )
    .option(
      '--restart <policy>',
      'when it ends by itself: never (dispatch default), on-failure (default of an agent ensure creates) or always; ' +
        'restarts back off 1 s doubling to 5 min, and 5 ends in a row without 10 min running leave it failed',
    );
}

/**
 * Adds the admin subcommands (`hosts`, `agents`, `keys`, `jwks`, `send`,
 * `messages`) to `program`; they call through a client `connect` opens from the
 * program's global flags. The admin token each reads is registered with
 * `redactor`, which filters what they print on failure.
 */
export function addAdminCommands(program: Command, redactor: SecretRedactor, connect: (flags: ClientFlags) => AdminServiceClient = (flags) => adminClient(flags, redactor)): void {
  const withClient = clientRunner(connect, redactor);
  const hosts = program.command('hosts').description('enroll, list, describe, drain, uncordon and revoke agent hosts');
  hosts
    .command('enroll')
    .description('create a host and print its one-time join token (ID.SECRET), or write it to --token-file; give it to `agent-host` via --join-token-file or $TETHER_JOIN_TOKEN')
    .argument('<name>', 'a name for the host')
    .option('--join-ttl <duration>', 'how long the join token is valid (default: serve\'s --join-token-ttl, 1h)', parseDurationMs)
    .option('--token-file <file>', 'write the join token to this new file, created 0600 (an existing path or a symbolic link is refused), and print only the host id')
    .action(async (name: string, flags: { joinTtl?: number; tokenFile?: string }, command: Command) => {
      // Before enrolling: a path that cannot be written must not cost a join token shown to no one.
      const output = flags.tokenFile === undefined ? undefined : SecretOutputFile.open(flags.tokenFile);
      try {
        await withClient(command, async (admin) => {
          const response = await invoke(admin.enrollHost.bind(admin), { name, joinTtlMs: flags.joinTtl ?? 0 });
          const validUntil = timeCell(response.joinExpiresAtMs);
          if (output === undefined) {
            console.error(`host ${response.hostId} enrolled; join token valid until ${validUntil} (shown once):`);
            console.log(response.joinToken);
            return;
          }
          output.write(response.joinToken);
          console.error(`host ${response.hostId} enrolled; join token valid until ${validUntil}, written to ${output.path}`);
          console.log(response.hostId);
        });
      } finally {
        output?.discard();
      }
    });
  addOutputOption(hosts.command('ls').description('list hosts (every page): state, connected, schedulable, drain, agents, capacity, last contact, credential expiry'), true).action(
    async (flags: { output: string }, command: Command) => {
      await withClient(command, async (admin) => {
        const found = await listHosts(admin);
        printList(formatOf(flags), found, HOST_COLUMNS);
      });
    },
  );
  addOutputOption(
    hosts
      .command('describe')
      .description('show a host: id, name, state, connected and last contact, labels, capacity and load, schedulable, drain state, clock skew, credential generation and expiry, and the agents on it')
      .argument('<host>', 'the host id, or a name only one host has'),
    false,
  ).action(async (wanted: string, flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const all = await listHosts(admin);
      const byId = all.find((h) => h.hostId === wanted);
      const byName = all.filter((h) => h.name === wanted);
      if (byId === undefined && byName.length > 1) {
        throw new UsageError(`${byName.length} hosts are named ${wanted} (${byName.map((h) => h.hostId).join(', ')}): give the host id`);
      }
      const host = byId ?? byName[0];
      if (host === undefined) throw new CliError(`not found: no host ${wanted} (see \`hosts ls\`)`, EXIT.notFound);
      const agents = await listAll(async (pageToken) => {
        const response = await invoke(admin.listAgents.bind(admin), { pageSize: 1000, pageToken, hostId: host.hostId });
        return { items: response.agents, nextPageToken: response.nextPageToken };
      });
      const format = formatOf(flags);
      if (format === 'json' || format === 'jsonl') {
        printObject(format, { host: cliJson(host), agents: cliJson(agents) });
        return;
      }
      printTable([
        ['HOST', host.hostId],
        ['NAME', host.name || '-'],
        ['STATE', host.state],
        ['CONNECTED', String(host.connected)],
        ['LAST_SEEN', timeCell(host.lastSeenMs)],
        ['LABELS', labelsCell(host.labels)],
        ['LOAD', `${host.agents} of ${host.capacity} agents`],
        ['SCHEDULABLE', String(host.schedulable)],
        ['DRAIN', host.drainState || '-'],
        ['CLOCK_SKEW', `${host.clockSkewMs} ms`],
        ['CREDENTIAL', `generation ${host.credentialGeneration} (expires ${timeCell(host.credentialExpiresAtMs)})`],
      ]);
      console.log('');
      printList(format, agents, AGENT_COLUMNS);
    });
  });
  addHostRevokeCommand(hosts, withClient);
  addHostDrainCommands(hosts, withClient);

  const agents = program.command('agents').description('dispatch, ensure, list, describe, stop and rotate agents');
  addOutputOption(agents.command('ls').description('list agents (every page)').option('--host <host-id>', 'only those on this host'), true).action(
    async (flags: { host?: string; output: string }, command: Command) => {
      await withClient(command, async (admin) => {
        const found = await listAll(async (pageToken) => {
          const response = await invoke(admin.listAgents.bind(admin), { pageSize: 1000, pageToken, hostId: flags.host ?? '' });
          return { items: response.agents, nextPageToken: response.nextPageToken };
        });
        printList(formatOf(flags), found, AGENT_COLUMNS);
      });
    },
  );
  addOutputOption(addSpecOptions(agents.command('dispatch').description('create an agent and place it on a host; prints the agent').option('--id <agent-id>', 'the agent id (generated if absent)')), false).action(
    async (flags: SpecFlags & { id?: string; output: string }, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.dispatchAgent.bind(admin), dispatchRequest(flags.id ?? '', flags));
        const agent = response.agent as AgentInfo;
        printObject(formatOf(flags), cliJson(agent) as Record<string, unknown>, agentRows(agent));
      });
    },
  );
  addOutputOption(
    addSpecOptions(
      agents
        .command('ensure')
        .description(
          'create the agent if missing, start it again if it ended; a different spec is refused (naming the fields; exit 4) unless --update, ' +
            'which replaces it and restarts the agent under a new incarnation; prints whether it was created or updated, and the agent',
        )
        .argument('<agent-id>')
        .option('--update', 'replace the spec of an existing agent whose spec differs, and restart it'),
    ),
    false,
  ).action(async (agentId: string, flags: SpecFlags & { update?: boolean; output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.ensureAgent.bind(admin), { ...dispatchRequest(agentId, flags), update: flags.update === true });
      const agent = response.agent as AgentInfo;
      printObject(formatOf(flags), { created: response.created, updated: response.updated, agent: cliJson(agent) }, [
        ['CREATED', String(response.created)],
        ['UPDATED', String(response.updated)],
        ...agentRows(agent),
      ]);
    });
  });
  addOutputOption(
    agents
      .command('describe')
      .description('show an agent: state, host, incarnation, generations issued and held, last heartbeat, restarts, last error, and its recent state transitions with their reasons')
      .argument('<agent-id>'),
    false,
  ).action(async (agentId: string, flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.describeAgent.bind(admin), { agentId });
      const agent = response.agent;
      if (agent === undefined) throw new Error('the control plane answered with no agent');
      const format = formatOf(flags);
      if (format === 'json' || format === 'jsonl') {
        printObject(format, { agent: cliJson(agent), transitions: cliJson(response.transitions) });
        return;
      }
      printDescription(agent, response.transitions);
    });
  });
  addOutputOption(
    agents
      .command('stop')
      .description('stop an agent and revoke all of its tokens; prints the agent')
      .argument('<agent-id>')
      .option('--reason <text>', 'why (shown to the host)'),
    false,
  ).action(async (agentId: string, flags: { reason?: string; output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.stopAgent.bind(admin), { agentId, reason: flags.reason ?? '' });
      const agent = response.agent as AgentInfo;
      printObject(formatOf(flags), cliJson(agent) as Record<string, unknown>, agentRows(agent));
    });
  });
  addOutputOption(
    agents
      .command('rotate')
      .description('issue a fresh credential to an agent now (its host must be connected); prints its generation and expiry')
      .argument('<agent-id>'),
    false,
  ).action(async (agentId: string, flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.rotateAgentCredential.bind(admin), { agentId });
      printObject(formatOf(flags), { agentId, generation: response.generation, expiresAt: isoOrNull(response.expiresAtMs) });
    });
  });

  addOutputOption(
    program
      .command('jwks')
      .description('print the public signing keys: a table of them, or (-o json) the JWKS document')
      .option('--purpose <purpose>', "tokens (the control plane's own) or audience (the federation JWKS of --issuer-url)", 'tokens'),
    true,
  ).action(
    async (flags: { output: string; purpose: string }, command: Command) => {
      await withClient(command, async (admin) => {
        const document = jwksDocument(await invoke(admin.getJwks.bind(admin), { purpose: flags.purpose }));
        const format = formatOf(flags);
        if (format === 'json') {
          console.log(JSON.stringify(document, null, 2));
          return;
        }
        printList(format, document.keys, [
          { header: 'KID', cell: (k) => k.kid ?? '-' },
          { header: 'KTY', cell: (k) => k.kty ?? '-' },
          { header: 'ALG', cell: (k) => k.alg ?? '-' },
          { header: 'USE', cell: (k) => k.use ?? '-' },
          { header: 'CRV', cell: (k) => k.crv ?? '-', isWide: true },
        ], (k) => k);
      });
    },
  );

  addMessageCommands(program, withClient);
  addKeyCommands(program, withClient);
  addWatchCommand(program, withClient);
}

/** Every host, page after page. */
function listHosts(admin: AdminServiceClient): Promise<HostInfo[]> {
  return listAll(async (pageToken) => {
    const response = await invoke(admin.listHosts.bind(admin), { pageSize: 1000, pageToken });
    return { items: response.hosts, nextPageToken: response.nextPageToken };
  });
}

/** `agents describe` as text: the agent's fields, then its transitions, oldest first. */
function printDescription(agent: AgentInfo, transitions: readonly AgentTransition[]): void {
  const spec = agent.spec;
  const what = spec === undefined ? '-' : spec.kind === 'module' ? `module ${spec.module}` : `process ${[spec.command, ...spec.args].join(' ')}`;
  const labels = agent.hostLabels.map((l) => `${l.key}=${l.value}`).join(',');
  printTable([
    ['AGENT', agent.agentId],
    ['NAME', agent.name],
    ['STATE', stateCell(agent.state)],
    ['DETAIL', agent.detail || '-'],
    ['HOST', agent.hostId || '-'],
    ['PLACEMENT', `${agent.requestedHostId === '' ? 'any host' : `host ${agent.requestedHostId}`}${labels === '' ? '' : ` carrying ${labels}`}`],
    ['SPEC', `${what}${spec !== undefined && spec.config !== '' ? ` (config: ${Buffer.byteLength(spec.config)} bytes)` : ''}`],
    ['INCARNATION', String(agent.incarnation)],
    ['RESTARTS', String(agent.restarts)],
    ['RESTART_POLICY', `${agent.restartPolicy || 'never'} (ends in a row: ${agent.failures})`],
    ['NEXT_RESTART', timeCell(agent.restartAtMs)],
    ['GENERATION_ISSUED', `${agent.generation} (expires ${timeCell(agent.expiresAtMs)})`],
    ['GENERATION_HELD', agent.ackedGeneration === 0 ? '-' : `${agent.ackedGeneration} (expires ${timeCell(agent.ackedExpiresAtMs)})`],
    ['LAST_HEARTBEAT', timeCell(agent.lastHeartbeatMs)],
    ['LAST_ERROR', agent.lastError === '' ? '-' : `${agent.lastError} (${timeCell(agent.lastErrorAtMs)})`],
    ['CREATED', timeCell(agent.createdAtMs)],
  ]);
  console.log('');
  printTable([
    ['TIME', 'FROM', 'TO', 'HOST', 'INCARNATION', 'REASON'],
    ...transitions.map((t) => [timeCell(t.atMs), stateCell(t.fromState), stateCell(t.toState), t.hostId || '-', String(t.incarnation), t.reason || '-']),
  ]);
}

interface SendFlags {
  data?: string;
  file?: string;
  contentType?: string;
  idempotencyKey?: string;
}

/** The payload of `send`: `--data`, `--file`, or (with neither) all of stdin, which must not be a terminal. */
async function readPayload(flags: SendFlags): Promise<Buffer> {
  if (flags.data !== undefined && flags.file !== undefined) throw new UsageError('give at most one of --data and --file');
  if (flags.data !== undefined) return Buffer.from(flags.data, 'utf8');
  if (flags.file !== undefined) return readFileSync(flags.file);
  if (process.stdin.isTTY) throw new UsageError('no payload: give --data or --file, or pipe it on stdin');
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : (chunk as Buffer));
  return Buffer.concat(chunks);
}

/** Parses a message seq argument (a positive whole number) for commander. */
function parseSeq(value: string): number {
  const seq = parseCount(value);
  if (seq === 0 || !Number.isSafeInteger(seq)) throw new CommanderInvalidArgument(`not a message seq: ${value}`);
  return seq;
}

/** Adds `send` and `messages ls|requeue|purge` (an agent's outbox and its dead letters). */
function addMessageCommands(program: Command, withClient: WithClient): void {
  addOutputOption(
    program
      .command('send')
      .description("send a message to an agent as the operator; it is in the agent's durable outbox when this prints its id and seq")
      .argument('<agent-id>')
      .option('--data <text>', 'the payload, as UTF-8 text')
      .option('--file <path>', 'read the payload from this file (with neither --data nor --file: from stdin)')
      .option('--content-type <type>', "the payload's content type (default application/octet-stream)")
      .option('--idempotency-key <key>', "makes a retried send safe: a second send with the same key returns the first one's id and seq"),
    false,
  ).action(async (agentId: string, flags: SendFlags & { output: string }, command: Command) => {
    const payload = await readPayload(flags);
    await withClient(command, async (admin) => {
      const response = await invoke(admin.sendMessages.bind(admin), {
        agentId,
        messages: [{ payload, contentType: flags.contentType ?? '', idempotencyKey: flags.idempotencyKey ?? '' }],
      });
      const sent = response.messages[0];
      if (sent === undefined) throw new Error('the control plane answered the send with no message');
      printObject(formatOf(flags), { agentId, id: sent.id, seq: sent.seq, duplicate: sent.duplicate });
    });
  });

  const messages = program.command('messages').description("list an agent's unacknowledged messages or dead letters; requeue or purge a dead letter");
  addOutputOption(
    messages
      .command('ls')
      .description('list the messages of an agent not acknowledged yet, or (--dead) its dead letters (every page)')
      .argument('<agent-id>')
      .option('--dead', 'list dead letters instead'),
    true,
  ).action(async (agentId: string, flags: { dead?: boolean; output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const found = await listAll(async (pageToken) => {
        const response = await invoke(admin.listMessages.bind(admin), { agentId, state: flags.dead === true ? 'dead' : 'pending', pageSize: 1000, pageToken });
        return { items: response.messages, nextPageToken: response.nextPageToken };
      });
      printList(formatOf(flags), found, MESSAGE_COLUMNS);
    });
  });
  addOutputOption(
    messages
      .command('requeue')
      .description('append a dead letter again under a new seq (same message id); prints the new seq')
      .argument('<agent-id>')
      .argument('<seq>', 'the seq of the dead letter', parseSeq),
    false,
  ).action(async (agentId: string, seq: number, flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.requeueMessage.bind(admin), { agentId, seq });
      printObject(formatOf(flags), { agentId, seq, newSeq: response.seq });
    });
  });
  addOutputOption(
    messages
      .command('purge')
      .description('delete a dead letter for good')
      .argument('<agent-id>')
      .argument('<seq>', 'the seq of the dead letter', parseSeq),
    false,
  ).action(async (agentId: string, seq: number, flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      await invoke(admin.purgeMessage.bind(admin), { agentId, seq });
      printObject(formatOf(flags), { agentId, seq, purged: true });
    });
  });
}

/** The columns of `messages ls`. */
const MESSAGE_COLUMNS: Column<MessageInfo>[] = [
  { header: 'SEQ', cell: (m) => String(m.seq) },
  { header: 'ID', cell: (m) => m.id },
  { header: 'STATE', cell: (m) => m.state },
  { header: 'ATTEMPTS', cell: (m) => String(m.attempts) },
  { header: 'BYTES', cell: (m) => String(m.sizeBytes) },
  { header: 'FROM', cell: (m) => m.from || '-' },
  { header: 'CONTENT_TYPE', cell: (m) => m.contentType || '-' },
  { header: 'CREATED', cell: (m) => timeCell(m.createdAtMs) },
  { header: 'LAST_ERROR', cell: (m) => m.lastError || '-' },
];

/** Adds `hosts revoke`: the host's stream ends with a final refusal, its credential is refused, its agents move. */
function addHostRevokeCommand(hosts: Command, withClient: WithClient): void {
  addOutputOption(
    hosts
      .command('revoke')
      .description('revoke a host: it is refused for good (the agent-host exits) and its agents are placed elsewhere; it needs a new enrollment to come back; prints how many agents moved')
      .argument('<host-id>'),
    false,
  ).action(async (hostId: string, flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.revokeHost.bind(admin), { hostId });
      printObject(formatOf(flags), { hostId, revoked: true, agentsMoved: response.agentsMoved });
    });
  });
}

/** How long one DrainHost call waits for progress before the CLI asks again. */
const DRAIN_POLL_MS = 30_000;
/** `hosts drain` gives up watching after this many calls (the drain goes on in the control plane). */
const MAX_DRAIN_POLLS = 100_000;
/** Exit status of `hosts drain` when agents are left blocked (the drain goes on, waiting for room): unfinished, not "not found". */
export const DRAIN_BLOCKED_EXIT_CODE = EXIT.unfinished;

/**
 * Adds `hosts drain` and `hosts uncordon`. `drain` starts (or retries) the drain
 * and, unless `--no-wait`, prints one line per agent as it moves, is blocked or
 * stays, until the drain settles: exit 0 once drained, 5 (unfinished) if agents
 * are left blocked (they are retried when a host connects or on the next `hosts drain`).
 */
function addHostDrainCommands(hosts: Command, withClient: WithClient): void {
  addOutputOption(
    hosts
      .command('drain')
      .description(
        'make a host unschedulable and move its agents (ensured or with a restart policy) to other hosts one at a time, each handed over without losing or repeating a message; ' +
          'prints each agent as it moves, is blocked (no host fits: the reason) or stays, then the drain (table: a line on stderr; jsonl: a last line; json: one document at the end); ' +
          'exit 0 when drained, 5 when agents are left blocked',
      )
      .argument('<host-id>')
      .option('--no-wait', 'start the drain and print where it stands, without waiting for it'),
    false,
    'table (default: a line per agent, the drain on stderr), wide (as table), json (one document at the end: the drain and its agents) or jsonl (a line per agent, then the drain)',
  ).action(async (hostId: string, flags: { wait: boolean; output: string }, command: Command) => {
    const format = formatOf(flags);
    await withClient(command, async (admin) => {
      const printed = new Map<string, string>();
      const results: unknown[] = [];
      const print = (agent: DrainAgentInfo): void => {
        if (agent.outcome === 'waiting' || agent.outcome === 'moving') return;
        const key = `${agent.outcome}|${agent.targetHostId}|${agent.reason}`;
        if (printed.get(agent.agentId) === key) return;
        printed.set(agent.agentId, key);
        results.push(cliJson(agent));
        if (format === 'json') return;
        if (format === 'jsonl') console.log(JSON.stringify(cliJson(agent)));
        else if (agent.outcome === 'moved') console.log(`${agent.agentId}: moved${agent.targetHostId === '' ? ' (waiting to be placed)' : ` to ${agent.targetHostId}`}`);
        else console.log(`${agent.agentId}: ${agent.outcome}: ${agent.reason}`);
      };
      let response = await invoke(admin.drainHost.bind(admin), { hostId, waitMs: 0, watch: false });
      response.agents.forEach(print);
      for (let poll = 0; flags.wait && !response.settled && poll < MAX_DRAIN_POLLS; poll++) {
        response = await invoke(admin.drainHost.bind(admin), { hostId, waitMs: DRAIN_POLL_MS, watch: true });
        response.agents.forEach(print);
      }
      const blocked = response.agents.filter((a) => a.outcome === 'blocked').length;
      const summary = {
        hostId,
        state: response.state === '' ? null : response.state,
        settled: response.settled,
        moved: response.agents.filter((a) => a.outcome === 'moved').length,
        blocked,
        stays: response.agents.filter((a) => a.outcome === 'stays').length,
      };
      if (format === 'json') console.log(JSON.stringify({ ...summary, agents: results }, null, 2));
      else if (format === 'jsonl') console.log(JSON.stringify(summary));
      else console.error(`host ${hostId}: ${summary.state ?? 'not drained'}; ${summary.moved} moved, ${blocked} blocked, ${summary.stays} staying`);
      if (flags.wait && blocked > 0) process.exitCode = DRAIN_BLOCKED_EXIT_CODE;
    });
  });
  addOutputOption(
    hosts
      .command('uncordon')
      .description('make a host schedulable again and stop its drain (a move already handed over completes); prints the drain state it had')
      .argument('<host-id>'),
    false,
  ).action(async (hostId: string, flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.uncordonHost.bind(admin), { hostId });
      printObject(formatOf(flags), { hostId, schedulable: true, previousDrainState: response.previousDrainState === '' ? null : response.previousDrainState });
    });
  });
}

/** Adds `keys ls|rotate|revoke`: the control plane's signing keys. */
function addKeyCommands(program: Command, withClient: WithClient): void {
  const keys = program.command('keys').description('list, rotate and revoke the signing keys');
  addOutputOption(
    keys
      .command('ls')
      .description(
        'list the signing keys and their states: standby (published, ready to sign), signing, verifying-only (retired, published until its last token expires), revoked',
      ),
    true,
  ).action(async (flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.listSigningKeys.bind(admin), {});
      printList(formatOf(flags), response.keys, [
        { header: 'KEY', cell: (key: SigningKeyInfo) => key.keyId },
        { header: 'PURPOSE', cell: (key) => key.purpose },
        { header: 'ALG', cell: (key) => key.alg },
        { header: 'STATE', cell: (key) => key.state },
        { header: 'CREATED', cell: (key) => timeCell(key.createdAtMs) },
        { header: 'SIGNING_SINCE', cell: (key) => timeCell(key.signingSinceMs) },
        { header: 'RETIRED', cell: (key) => timeCell(key.retiredAtMs) },
        { header: 'VERIFIES_UNTIL', cell: (key) => timeCell(key.verifyUntilMs) },
      ]);
    });
  });
  addOutputOption(
    keys
      .command('rotate')
      .description(
        'promote the standby key to signer (it has been in the JWKS longer than the JWKS cache lifetime); the old signer keeps verifying until its last token expires, and a new standby is published',
      )
      .option('--purpose <purpose>', "tokens (the control plane's own keys) or audience (the federation keys of --issuer-url)", 'tokens'),
    false,
  ).action(async (flags: { output: string; purpose: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.rotateSigningKey.bind(admin), { purpose: flags.purpose });
      printObject(formatOf(flags), {
        keyId: response.keyId,
        retiredKeyId: response.retiredKeyId,
        retiredVerifiesUntil: isoOrNull(response.retiredVerifyUntilMs),
        standbyKeyId: response.standbyKeyId,
      });
    });
  });
  addOutputOption(
    keys
      .command('revoke')
      .description(
        'revoke a compromised key: its tokens are refused at once and it leaves the JWKS; the standby takes over if it signed; ' +
          'connected hosts and agents get credentials from another key within the window printed; disconnected hosts it signed for must be enrolled again',
      )
      .argument('<key-id>'),
    false,
  ).action(async (keyId: string, flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.revokeSigningKey.bind(admin), { keyId });
      printObject(formatOf(flags), {
        keyId: response.keyId,
        revoked: true,
        signerKeyId: response.signerKeyId,
        hostsResigned: response.hostsResigned,
        hostsToReenroll: response.hostsToReenroll,
        agentsScheduled: response.agentsScheduled,
        agentsAtReconnect: response.agentsAtReconnect,
        resignWindowMs: response.resignWindowMs,
      });
    });
  });
}
