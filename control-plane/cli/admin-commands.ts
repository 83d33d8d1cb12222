import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError as CommanderInvalidArgument, type Command } from 'commander';
import { collectLabel, parseCount, parseDurationMs, parseDurationWithin, readSecret } from '../../common/cli.js';
import { parseAudienceFile, type AudienceFileSpec } from '../../common/audience-files.js';
import { assertPlaintextAllowed } from '../../common/loopback.js';
import { parseSecret, type SecretRedactor } from '../../common/secrets.js';
import { AdminServiceClient, AgentInfo, AgentTransition, DrainAgentInfo, HostInfo, MessageInfo, SigningKeyInfo } from '../../gen/tether/v1/admin.js';
import { AgentState, type Label } from '../../gen/tether/v1/common.js';
import { SecretOutputFile } from './secret-output-file.js';
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

function invoke<Req, Res>(method: Unary<Req, Res>, request: Req): Promise<Res> {
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
  throw new Error('no admin token: set TETHER_ADMIN_TOKEN or --admin-token-file (or run from beside the data directory)');
}

/** An admin client for `flags`: their server, their CA (plaintext on loopback only without one), their admin token. */
export function adminClient(flags: ClientFlags, redactor: SecretRedactor): AdminServiceClient {
  const token = adminToken(flags, redactor);
  const credentials =
    flags.caFile === undefined ? grpc.credentials.createInsecure() : grpc.credentials.createSsl(readFileSync(flags.caFile));
  if (flags.caFile === undefined) assertPlaintextAllowed(flags.server);
  const interceptor: grpc.Interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        next(metadata, listener);
      },
    });
  return new AdminServiceClient(flags.server, credentials, { interceptors: [interceptor] });
}

function stateName(state: AgentState): string {
  if (state === AgentState.AGENT_STATE_UNSPECIFIED) return '-';
  return AgentState[state].replace('AGENT_STATE_', '').toLowerCase();
}

function isoOrDash(ms: number): string {
  return ms === 0 ? '-' : new Date(ms).toISOString();
}

function printTable(rows: string[][]): void {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? '').length))) ?? [];
  for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd());
}

/**
 * Runs `body` with an admin client for the command's flags; turns gRPC errors
 * into one clear line and exit 1. The details are filtered by the redactor: a
 * status grpc-js makes up on the client side can quote a header value.
 */
type WithClient = (command: Command, body: (admin: AdminServiceClient) => Promise<void>) => Promise<void>;

/** A {@link WithClient} that opens its clients with `connect`. */
function clientRunner(connect: (flags: ClientFlags) => AdminServiceClient, redactor: SecretRedactor): WithClient {
  return async (command, body) => {
    const admin = connect(command.optsWithGlobals<ClientFlags>());
    try {
      await body(admin);
    } catch (err) {
      const serviceError = err as Partial<grpc.ServiceError>;
      if (typeof serviceError.code === 'number') {
        console.error(`error: ${grpc.status[serviceError.code]}: ${redactor.redact(serviceError.details ?? '')}`);
        process.exitCode = 1;
        return;
      }
      throw err;
    } finally {
      admin.close();
    }
  };
}

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
  if ((flags.module === undefined) === (flags.command === undefined)) throw new Error('give exactly one of --module or --command');
  if (flags.restart !== undefined && !['never', 'on-failure', 'always'].includes(flags.restart)) {
    throw new Error('--restart must be one of never, on-failure, always');
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
      parseDurationWithin('--handler-deadline', { minMs: 0, maxMs: 7 * 24 * 3_600_000 }),
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
  const hosts = program.command('hosts').description('enroll and list agent hosts');
  hosts
    .command('enroll')
    .description('create a host and print its one-time join token (ID.SECRET), or write it to --token-file; give it to `agent-host` via --join-token-file or $TETHER_JOIN_TOKEN')
    .argument('<name>', 'a name for the host')
    .option('--join-ttl <duration>', 'how long the join token is valid (default 1h)', parseDurationMs)
    .option('--token-file <file>', 'write the join token to this new file, created 0600 (an existing path or a symbolic link is refused), and print only the host id')
    .action(async (name: string, flags: { joinTtl?: number; tokenFile?: string }, command: Command) => {
      // Before enrolling: a path that cannot be written must not cost a join token shown to no one.
      const output = flags.tokenFile === undefined ? undefined : SecretOutputFile.open(flags.tokenFile);
      try {
        await withClient(command, async (admin) => {
          const response = await invoke(admin.enrollHost.bind(admin), { name, joinTtlMs: flags.joinTtl ?? 0 });
          const validUntil = isoOrDash(response.joinExpiresAtMs);
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
  hosts
    .command('ls')
    .description('list hosts')
    .option('--json', 'print JSON')
    .action(async (flags: { json?: boolean }, command: Command) => {
      await withClient(command, async (admin) => {
        const found: HostInfo[] = [];
        let pageToken = '';
        for (let page = 0; page < 10_000; page++) {
          const response = await invoke(admin.listHosts.bind(admin), { pageSize: 1000, pageToken });
          found.push(...response.hosts);
          pageToken = response.nextPageToken;
          if (pageToken === '') break;
        }
        if (flags.json === true) {
          console.log(JSON.stringify(found.map((h) => HostInfo.toJSON(h)), null, 2));
          return;
        }
        printTable([
          ['HOST', 'STATE', 'CONNECTED', 'SCHEDULABLE', 'DRAIN', 'AGENTS', 'CAPACITY', 'SKEW_MS', 'CREDENTIAL_EXPIRES'],
          ...found.map((h) => [
            h.hostId,
            h.state,
            String(h.connected),
            String(h.schedulable),
            h.drainState === '' ? '-' : h.drainState,
            String(h.agents),
            String(h.capacity),
            String(h.clockSkewMs),
            isoOrDash(h.credentialExpiresAtMs),
          ]),
        ]);
      });
    });
  addHostRevokeCommand(hosts, withClient);
  addHostDrainCommands(hosts, withClient);

  const agents = program.command('agents').description('dispatch, list, stop and rotate agents');
  agents
    .command('ls')
    .description('list agents')
    .option('--host <host-id>', 'only those on this host')
    .option('--json', 'print JSON')
    .action(async (flags: { host?: string; json?: boolean }, command: Command) => {
      await withClient(command, async (admin) => {
        const found: AgentInfo[] = [];
        let pageToken = '';
        for (let page = 0; page < 10_000; page++) {
          const response = await invoke(admin.listAgents.bind(admin), { pageSize: 1000, pageToken, hostId: flags.host ?? '' });
          found.push(...response.agents);
          pageToken = response.nextPageToken;
          if (pageToken === '') break;
        }
        if (flags.json === true) {
          console.log(JSON.stringify(found.map((a) => AgentInfo.toJSON(a)), null, 2));
          return;
        }
        printTable([
          ['AGENT', 'STATE', 'HOST', 'INCARNATION', 'RESTARTS', 'GENERATION', 'TOKEN_EXPIRES', 'HELD_GENERATION', 'HELD_EXPIRES', 'LAST_HEARTBEAT'],
          ...found.map((a) => [
            a.agentId,
            stateName(a.state),
            a.hostId || '-',
            String(a.incarnation),
            String(a.restarts),
            String(a.generation),
            isoOrDash(a.expiresAtMs),
            a.ackedGeneration === 0 ? '-' : String(a.ackedGeneration),
            isoOrDash(a.ackedExpiresAtMs),
            isoOrDash(a.lastHeartbeatMs),
          ]),
        ]);
      });
    });
  addSpecOptions(agents.command('dispatch').description('create an agent and place it on a host').option('--id <agent-id>', 'the agent id (generated if absent)')).action(
    async (flags: SpecFlags & { id?: string }, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.dispatchAgent.bind(admin), dispatchRequest(flags.id ?? '', flags));
        console.log(JSON.stringify(AgentInfo.toJSON(response.agent as AgentInfo), null, 2));
      });
    },
  );
  addSpecOptions(
    agents
      .command('ensure')
      .description(
        'create the agent if missing, start it again if it ended; a different spec is refused (naming the fields) unless --update, ' +
          'which replaces it and restarts the agent under a new incarnation',
      )
      .argument('<agent-id>')
      .option('--update', 'replace the spec of an existing agent whose spec differs, and restart it'),
  ).action(async (agentId: string, flags: SpecFlags & { update?: boolean }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.ensureAgent.bind(admin), { ...dispatchRequest(agentId, flags), update: flags.update === true });
      console.log(JSON.stringify({ created: response.created, updated: response.updated, agent: AgentInfo.toJSON(response.agent as AgentInfo) }, null, 2));
    });
  });
  agents
    .command('describe')
    .description('show an agent: state, host, incarnation, generations issued and held, last heartbeat, restarts, last error, and its recent state transitions with their reasons')
    .argument('<agent-id>')
    .option('--json', 'print JSON')
    .action(async (agentId: string, flags: { json?: boolean }, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.describeAgent.bind(admin), { agentId });
        const agent = response.agent;
        if (agent === undefined) throw new Error('the control plane answered with no agent');
        if (flags.json === true) {
          console.log(JSON.stringify({ agent: AgentInfo.toJSON(agent), transitions: response.transitions.map((t) => AgentTransition.toJSON(t)) }, null, 2));
          return;
        }
        printDescription(agent, response.transitions);
      });
    });
  agents
    .command('stop')
    .description('stop an agent and revoke all of its tokens')
    .argument('<agent-id>')
    .option('--reason <text>', 'why (shown to the host)')
    .action(async (agentId: string, flags: { reason?: string }, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.stopAgent.bind(admin), { agentId, reason: flags.reason ?? '' });
        console.log(JSON.stringify(AgentInfo.toJSON(response.agent as AgentInfo), null, 2));
      });
    });
  agents
    .command('rotate')
    .description("issue a fresh credential to an agent now (its host must be connected)")
    .argument('<agent-id>')
    .action(async (agentId: string, _flags: unknown, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.rotateAgentCredential.bind(admin), { agentId });
        console.log(JSON.stringify({ agentId, generation: response.generation, expiresAt: isoOrDash(response.expiresAtMs) }));
      });
    });

  program
    .command('jwks')
    .description('print the public signing keys (JWKS)')
    .option('--purpose <purpose>', 'tokens (the control plane\'s own) or audience (the federation JWKS of --issuer-url)', 'tokens')
    .action(async (flags: { purpose: string }, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.getJwks.bind(admin), { purpose: flags.purpose });
        console.log(JSON.stringify(jwksDocument(response), null, 2));
      });
    });

  addMessageCommands(program, withClient);
  addKeyCommands(program, withClient);
}

/** `agents describe` as text: the agent's fields, then its transitions, oldest first. */
function printDescription(agent: AgentInfo, transitions: readonly AgentTransition[]): void {
  const spec = agent.spec;
  const what = spec === undefined ? '-' : spec.kind === 'module' ? `module ${spec.module}` : `process ${[spec.command, ...spec.args].join(' ')}`;
  const labels = agent.hostLabels.map((l) => `${l.key}=${l.value}`).join(',');
  printTable([
    ['AGENT', agent.agentId],
    ['NAME', agent.name],
    ['STATE', stateName(agent.state)],
    ['DETAIL', agent.detail || '-'],
    ['HOST', agent.hostId || '-'],
    ['PLACEMENT', `${agent.requestedHostId === '' ? 'any host' : `host ${agent.requestedHostId}`}${labels === '' ? '' : ` carrying ${labels}`}`],
    ['SPEC', `${what}${spec !== undefined && spec.config !== '' ? ` (config: ${Buffer.byteLength(spec.config)} bytes)` : ''}`],
    ['INCARNATION', String(agent.incarnation)],
    ['RESTARTS', String(agent.restarts)],
    ['RESTART_POLICY', `${agent.restartPolicy || 'never'} (ends in a row: ${agent.failures})`],
    ['NEXT_RESTART', isoOrDash(agent.restartAtMs)],
    ['GENERATION_ISSUED', `${agent.generation} (expires ${isoOrDash(agent.expiresAtMs)})`],
    ['GENERATION_HELD', agent.ackedGeneration === 0 ? '-' : `${agent.ackedGeneration} (expires ${isoOrDash(agent.ackedExpiresAtMs)})`],
    ['LAST_HEARTBEAT', isoOrDash(agent.lastHeartbeatMs)],
    ['LAST_ERROR', agent.lastError === '' ? '-' : `${agent.lastError} (${isoOrDash(agent.lastErrorAtMs)})`],
    ['CREATED', isoOrDash(agent.createdAtMs)],
  ]);
  console.log('');
  printTable([
    ['TIME', 'FROM', 'TO', 'HOST', 'INCARNATION', 'REASON'],
    ...transitions.map((t) => [isoOrDash(t.atMs), stateName(t.fromState), stateName(t.toState), t.hostId || '-', String(t.incarnation), t.reason || '-']),
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
  if (flags.data !== undefined && flags.file !== undefined) throw new Error('give at most one of --data and --file');
  if (flags.data !== undefined) return Buffer.from(flags.data, 'utf8');
  if (flags.file !== undefined) return readFileSync(flags.file);
  if (process.stdin.isTTY) throw new Error('no payload: give --data or --file, or pipe it on stdin');
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
  program
    .command('send')
    .description('send a message to an agent as the operator; it is in the agent\'s durable outbox when this prints its id and seq')
    .argument('<agent-id>')
    .option('--data <text>', 'the payload, as UTF-8 text')
    .option('--file <path>', 'read the payload from this file (with neither --data nor --file: from stdin)')
    .option('--content-type <type>', 'the payload\'s content type (default application/octet-stream)')
    .option('--idempotency-key <key>', 'makes a retried send safe: a second send with the same key returns the first one\'s id and seq')
    .action(async (agentId: string, flags: SendFlags, command: Command) => {
      const payload = await readPayload(flags);
      await withClient(command, async (admin) => {
        const response = await invoke(admin.sendMessages.bind(admin), {
          agentId,
          messages: [{ payload, contentType: flags.contentType ?? '', idempotencyKey: flags.idempotencyKey ?? '' }],
        });
        const sent = response.messages[0];
        if (sent === undefined) throw new Error('the control plane answered the send with no message');
        console.log(JSON.stringify({ agentId, id: sent.id, seq: sent.seq, duplicate: sent.duplicate }));
      });
    });

  const messages = program.command('messages').description("list an agent's unacknowledged messages or dead letters; requeue or purge a dead letter");
  messages
    .command('ls')
    .description('list the messages of an agent not acknowledged yet (or, with --dead, its dead letters)')
    .argument('<agent-id>')
    .option('--dead', 'list dead letters instead')
    .option('--json', 'print JSON')
    .action(async (agentId: string, flags: { dead?: boolean; json?: boolean }, command: Command) => {
      await withClient(command, async (admin) => {
        const found: MessageInfo[] = [];
        let pageToken = '';
        for (let page = 0; page < 10_000; page++) {
          const response = await invoke(admin.listMessages.bind(admin), { agentId, state: flags.dead === true ? 'dead' : 'pending', pageSize: 1000, pageToken });
          found.push(...response.messages);
          pageToken = response.nextPageToken;
          if (pageToken === '') break;
        }
        if (flags.json === true) {
          console.log(JSON.stringify(found.map((m) => MessageInfo.toJSON(m)), null, 2));
          return;
        }
        printTable([
          ['SEQ', 'ID', 'STATE', 'ATTEMPTS', 'BYTES', 'FROM', 'CONTENT_TYPE', 'CREATED', 'LAST_ERROR'],
          ...found.map((m) => [String(m.seq), m.id, m.state, String(m.attempts), String(m.sizeBytes), m.from, m.contentType, isoOrDash(m.createdAtMs), m.lastError || '-']),
        ]);
      });
    });
  messages
    .command('requeue')
    .description('append a dead letter again under a new seq (same message id); prints the new seq')
    .argument('<agent-id>')
    .argument('<seq>', 'the seq of the dead letter', parseSeq)
    .action(async (agentId: string, seq: number, _flags: unknown, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.requeueMessage.bind(admin), { agentId, seq });
        console.log(JSON.stringify({ agentId, seq, newSeq: response.seq }));
      });
    });
  messages
    .command('purge')
    .description('delete a dead letter for good')
    .argument('<agent-id>')
    .argument('<seq>', 'the seq of the dead letter', parseSeq)
    .action(async (agentId: string, seq: number, _flags: unknown, command: Command) => {
      await withClient(command, async (admin) => {
        await invoke(admin.purgeMessage.bind(admin), { agentId, seq });
        console.log(JSON.stringify({ agentId, seq, purged: true }));
      });
    });
}

/** Adds `hosts revoke`: the host's stream ends with a final refusal, its credential is refused, its agents move. */
function addHostRevokeCommand(hosts: Command, withClient: WithClient): void {
  hosts
    .command('revoke')
    .description('revoke a host: it is refused for good (the agent-host exits) and its agents are placed elsewhere; it needs a new enrollment to come back')
    .argument('<host-id>')
    .action(async (hostId: string, _flags: unknown, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.revokeHost.bind(admin), { hostId });
        console.log(JSON.stringify({ hostId, revoked: true, agentsMoved: response.agentsMoved }));
      });
    });
}

/** How long one DrainHost call waits for progress before the CLI asks again. */
const DRAIN_POLL_MS = 30_000;
/** `hosts drain` gives up watching after this many calls (the drain goes on in the control plane). */
const MAX_DRAIN_POLLS = 100_000;
/** Exit status of `hosts drain` when agents are left blocked (the drain goes on, waiting for room). */
export const DRAIN_BLOCKED_EXIT_CODE = 3;

/**
 * Adds `hosts drain` and `hosts uncordon`. `drain` starts (or retries) the drain
 * and, unless `--no-wait`, prints one line per agent as it moves, is blocked or
 * stays, until the drain settles: exit 0 once drained, 3 if agents are left
 * blocked (they are retried when a host connects or on the next `hosts drain`).
 */
function addHostDrainCommands(hosts: Command, withClient: WithClient): void {
  hosts
    .command('drain')
    .description(
      'make a host unschedulable and move its agents (ensured or with a restart policy) to other hosts one at a time, each handed over without losing or repeating a message; ' +
        'prints each agent as it moves, is blocked (no host fits: the reason) or stays; exit 0 when drained, 3 when agents are left blocked',
    )
    .argument('<host-id>')
    .option('--no-wait', 'start the drain and print where it stands, without waiting for it')
    .option('--json', 'print JSON lines (one per agent result, then the drain)')
    .action(async (hostId: string, flags: { wait: boolean; json?: boolean }, command: Command) => {
      await withClient(command, async (admin) => {
        const printed = new Map<string, string>();
        const print = (agent: DrainAgentInfo): void => {
          if (agent.outcome === 'waiting' || agent.outcome === 'moving') return;
          const key = `${agent.outcome}|${agent.targetHostId}|${agent.reason}`;
          if (printed.get(agent.agentId) === key) return;
          printed.set(agent.agentId, key);
          if (flags.json === true) console.log(JSON.stringify(DrainAgentInfo.toJSON(agent)));
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
        const summary = { hostId, state: response.state, settled: response.settled, moved: response.agents.filter((a) => a.outcome === 'moved').length, blocked, stays: response.agents.filter((a) => a.outcome === 'stays').length };
        if (flags.json === true) console.log(JSON.stringify(summary));
        else console.error(`host ${hostId}: ${response.state === '' ? 'not drained' : response.state}; ${summary.moved} moved, ${blocked} blocked, ${summary.stays} staying`);
        if (flags.wait && blocked > 0) process.exitCode = DRAIN_BLOCKED_EXIT_CODE;
      });
    });
  hosts
    .command('uncordon')
    .description('make a host schedulable again and stop its drain (a move already handed over completes)')
    .argument('<host-id>')
    .action(async (hostId: string, _flags: unknown, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.uncordonHost.bind(admin), { hostId });
        console.log(JSON.stringify({ hostId, schedulable: true, previousDrainState: response.previousDrainState }));
      });
    });
}

/** Adds `keys ls|rotate|revoke`: the control plane's signing keys. */
function addKeyCommands(program: Command, withClient: WithClient): void {
  const keys = program.command('keys').description('list, rotate and revoke the signing keys');
  keys
    .command('ls')
    .description(
      'list the signing keys and their states: standby (published, ready to sign), signing, verifying-only (retired, published until its last token expires), revoked',
    )
    .option('--json', 'print JSON')
    .action(async (flags: { json?: boolean }, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.listSigningKeys.bind(admin), {});
        if (flags.json === true) {
          console.log(JSON.stringify(response.keys.map((key) => SigningKeyInfo.toJSON(key)), null, 2));
          return;
        }
        printTable([
          ['KEY', 'PURPOSE', 'ALG', 'STATE', 'CREATED', 'SIGNING_SINCE', 'RETIRED', 'VERIFIES_UNTIL'],
          ...response.keys.map((key) => [
            key.keyId,
            key.purpose,
            key.alg,
            key.state,
            isoOrDash(key.createdAtMs),
            isoOrDash(key.signingSinceMs),
            isoOrDash(key.retiredAtMs),
            isoOrDash(key.verifyUntilMs),
          ]),
        ]);
      });
    });
  keys
    .command('rotate')
    .description(
      'promote the standby key to signer (it has been in the JWKS longer than the JWKS cache lifetime); the old signer keeps verifying until its last token expires, and a new standby is published',
    )
    .option('--purpose <purpose>', 'tokens (the control plane\'s own keys) or audience (the federation keys of --issuer-url)', 'tokens')
    .action(async (flags: { purpose: string }, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.rotateSigningKey.bind(admin), { purpose: flags.purpose });
        console.log(
          JSON.stringify({
            keyId: response.keyId,
            retiredKeyId: response.retiredKeyId,
            retiredVerifiesUntil: isoOrDash(response.retiredVerifyUntilMs),
            standbyKeyId: response.standbyKeyId,
          }),
        );
      });
    });
  keys
    .command('revoke')
    .description(
      'revoke a compromised key: its tokens are refused at once and it leaves the JWKS; the standby takes over if it signed; ' +
        'connected hosts and agents get credentials from another key within the window printed; disconnected hosts it signed for must be enrolled again',
    )
    .argument('<key-id>')
    .action(async (keyId: string, _flags: unknown, command: Command) => {
      await withClient(command, async (admin) => {
        const response = await invoke(admin.revokeSigningKey.bind(admin), { keyId });
        console.log(
          JSON.stringify({
            keyId: response.keyId,
            revoked: true,
            signerKeyId: response.signerKeyId,
            hostsResigned: response.hostsResigned,
            hostsToReenroll: response.hostsToReenroll,
            agentsScheduled: response.agentsScheduled,
            agentsAtReconnect: response.agentsAtReconnect,
            resignWindowMs: response.resignWindowMs,
          }),
        );
      });
    });
}
