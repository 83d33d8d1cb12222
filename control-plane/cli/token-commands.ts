import type { Command } from 'commander';
import { InvalidArgumentError as CommanderInvalidArgument } from 'commander';
import { SystemClock } from '../../common/clock.js';
import { parseDurationMs } from '../../common/cli.js';
import type { SecretRedactor } from '../../common/secrets.js';
import type { AdminServiceClient, AdminTokenInfo, AuditRecordInfo } from '../../gen/tether/v1/admin.js';
import { clientRunner, formatOf, invoke, listAll, type ClientFlags } from './admin-commands.js';
import { addOutputOption, cliJson, printList, printObject, timeCell, type Column } from './output.js';
import { SecretOutputFile } from './secret-output-file.js';

/** The columns of `tokens ls`. */
const TOKEN_COLUMNS: Column<AdminTokenInfo>[] = [
  { header: 'TOKEN', cell: (t) => t.tokenId },
  { header: 'ROLE', cell: (t) => t.role },
  { header: 'STATE', cell: (t) => (t.retiredAtMs === 0 ? 'valid' : 'retired') },
  { header: 'NAME', cell: (t) => t.name || '-' },
  { header: 'CREATED', cell: (t) => timeCell(t.createdAtMs) },
  { header: 'CREATED_BY', cell: (t) => t.createdBy || '-', isWide: true },
  { header: 'RETIRED', cell: (t) => timeCell(t.retiredAtMs) },
];

/** The columns of `audit`. */
const AUDIT_COLUMNS: Column<AuditRecordInfo>[] = [
  { header: 'ID', cell: (r) => String(r.id), isWide: true },
  { header: 'TIME', cell: (r) => timeCell(r.atMs) },
  { header: 'TOKEN', cell: (r) => r.tokenId },
  { header: 'METHOD', cell: (r) => r.method },
  { header: 'TARGETS', cell: (r) => (r.targets.length === 0 ? '-' : r.targets.map((t) => `${t.kind}=${t.id}`).join(',')) },
  { header: 'STATUS', cell: (r) => r.status },
];

/** A token as `tokens` prints it in JSON: `state` beside the times. */
function tokenJson(token: AdminTokenInfo): Record<string, unknown> {
  return { ...(cliJson(token) as Record<string, unknown>), state: token.retiredAtMs === 0 ? 'valid' : 'retired' };
}

/** Parses `--role`. */
function parseRole(value: string): string {
  if (value !== 'admin' && value !== 'viewer') throw new CommanderInvalidArgument('a role is admin or viewer');
  return value;
}

/**
 * Adds `tokens ls|add|retire` (the admin tokens, their ids and roles) and
 * `audit` (who called what on AdminService, when, and how it ended).
 */
export function addTokenCommands(program: Command, redactor: SecretRedactor, connect: (flags: ClientFlags) => AdminServiceClient): void {
  const withClient = clientRunner(connect, redactor);
  const tokens = program
    .command('tokens')
    .description('list, add and retire admin tokens: each has an id and a role, admin (everything) or viewer (list and describe only; see docs/security.md)');
  addOutputOption(tokens.command('ls').description('list the admin tokens (every page): the bootstrap token, then those added, retired ones included; never a secret'), true).action(
    async (flags: { output: string }, command: Command) => {
      await withClient(command, async (admin) => {
        const found = await listAll(async (pageToken) => {
          const response = await invoke(admin.listAdminTokens.bind(admin), { pageSize: 1000, pageToken });
          return { items: response.tokens, nextPageToken: response.nextPageToken };
        });
        printList(formatOf(flags), found, TOKEN_COLUMNS, tokenJson);
      });
    },
  );
  tokens
    .command('add')
    .description('add an admin token, valid at once; print it (shown once: only its hash is kept), or write it to --token-file and print its id')
    .option('--role <role>', 'admin (every call) or viewer (lists and describes only)', parseRole, 'viewer')
    .option('--name <name>', 'a label: whose token, what for')
    .option('--token-file <file>', 'write the token to this new file, created 0600 (an existing path or a symbolic link is refused), and print only its id')
    .action(async (flags: { role: string; name?: string; tokenFile?: string }, command: Command) => {
      // Before adding: a path that cannot be written must not cost a token shown to no one.
      const output = flags.tokenFile === undefined ? undefined : SecretOutputFile.open(flags.tokenFile);
      try {
        await withClient(command, async (admin) => {
          const response = await invoke(admin.addAdminToken.bind(admin), { name: flags.name ?? '', role: flags.role });
          const tokenId = response.token?.tokenId ?? '';
          redactor.register(response.secretToken);
          if (output === undefined) {
            console.error(`admin token ${tokenId} (${flags.role}) added (shown once):`);
            console.log(response.secretToken);
            return;
          }
          output.write(response.secretToken);
          console.error(`admin token ${tokenId} (${flags.role}) added, written to ${output.path}`);
          console.log(tokenId);
        });
      } finally {
        output?.discard();
      }
    });
  addOutputOption(
    tokens.command('retire').description('retire an admin token: every call with it is refused from now on (the bootstrap token is changed in its file or variable, and a restart)').argument('<token-id>'),
    false,
  ).action(async (tokenId: string, flags: { output: string }, command: Command) => {
    await withClient(command, async (admin) => {
      const response = await invoke(admin.retireAdminToken.bind(admin), { tokenId });
      const token = response.token;
      if (token === undefined) throw new Error('the control plane answered with no token');
      printObject(formatOf(flags), tokenJson(token));
    });
  });

  addOutputOption(
    program
      .command('audit')
      .description('print the audit log, oldest first (every page): each AdminService call with the admin token that made it, the method, the ids it named and its status; admin tokens only')
      .option('--token <token-id>', 'only the calls of this admin token (bootstrap: the bootstrap token)')
      .option('--since <duration>', 'only the calls of this last while (1h, 7d)', parseDurationMs),
    true,
  ).action(async (flags: { token?: string; since?: number; output: string }, command: Command) => {
    const sinceMs = flags.since === undefined ? 0 : new SystemClock().now() - flags.since;
    await withClient(command, async (admin) => {
      const found = await listAll(async (pageToken) => {
        const response = await invoke(admin.listAuditRecords.bind(admin), { pageSize: 1000, pageToken, tokenId: flags.token ?? '', sinceMs });
        return { items: response.records, nextPageToken: response.nextPageToken };
      });
      printList(formatOf(flags), found, AUDIT_COLUMNS);
    });
  });
}
