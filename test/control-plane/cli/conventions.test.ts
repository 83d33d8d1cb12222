/**
 * The CLI convention (issue 18), run for real: each admin subcommand of the
 * `control-plane` binary, as a child process against a control plane on
 * 127.0.0.1:0 with hosts and agents (so lists are not empty), in `table` and
 * `-o json` (parsed), does what its `--help` says; states are lowercase words,
 * times ISO 8601 (and relative in tables); the documented exit statuses hold
 * for not found (3), refused (4), usage (2), unreachable (1) and a drain left
 * blocked (5). Every option each command lists is used by some run here (the
 * last test checks it against the commander objects), and the help of every
 * command group names all of its subcommands. The local commands (serve,
 * backup, restore, new-epoch, generate-admin-token) have their own tests.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../../common/cli.js';
import { controlPlaneProgram } from '../../../control-plane/main.js';
import { JWKS_MAX_AGE_MS } from '../../../control-plane/tokens/signing-keys.js';
import { allCommands, pathOf } from '../../support/cli-options.js';
import { runControlPlaneCli, type CliRun } from '../../support/control-plane-cli.js';
import { call, Harness, idleModule } from '../../support/harness.js';
import { ScriptedModule } from '../../support/scripted-module.js';
import { assertNoSecrets } from '../../support/secrets.js';
import { waitUntil } from '../../support/wait.js';

/** The commands that call no control plane, tested elsewhere. */
const LOCAL_COMMANDS: readonly string[] = ['serve', 'backup', 'restore', 'new-epoch', 'generate-admin-token'];
/** Fields of the CLI's JSON that hold a duration in milliseconds (every other `…Ms` would be a time not turned into ISO 8601). */
const DURATION_FIELDS: readonly string[] = ['clockSkewMs', 'resignWindowMs', 'handlerDeadlineMs'];
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** The words each run used, by command path: the last test checks that every listed option was used. */
const used = new Map<string, Set<string>>();

function record(args: readonly string[]): void {
  const program = controlPlaneProgram();
  let command: Command = program;
  let words = 0;
  for (const arg of args) {
    const next = command.commands.find((c) => c.name() === arg);
    if (next === undefined) break;
    command = next;
    words++;
  }
  const key = pathOf(command).join(' ');
  const set = used.get(key) ?? new Set<string>();
  for (const arg of args.slice(words)) if (arg.startsWith('-')) set.add(arg.split('=')[0] as string);
  used.set(key, set);
}

/** Every JSON value the CLI printed: agent states as words, times ISO 8601 (or null), no `…Ms` time left. */
function assertConventionalJson(value: unknown, where: string): void {
  if (Array.isArray(value)) {
    for (const item of value) assertConventionalJson(item, where);
    return;
  }
  if (value === null || typeof value !== 'object') {
    expect(String(value), where).not.toContain('AGENT_STATE_');
    return;
  }
  for (const [key, field] of Object.entries(value as Record<string, unknown>)) {
    if (key.endsWith('Ms')) expect(DURATION_FIELDS, `${where}: ${key}`).toContain(key);
    if (/(At|Since|Until|^lastHeartbeat|^lastSeen|^at)$/.test(key) && field !== null) expect(field, `${where}: ${key}`).toMatch(ISO);
    assertConventionalJson(field, where);
  }
}

/** A table: no enum names, and every time shown both ISO 8601 and relative. */
function assertConventionalTable(text: string, where: string): void {
  expect(text, where).not.toContain('AGENT_STATE_');
  const times = [...text.matchAll(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z( \((?:[^)]+ ago|in [^)]+|now)\))?/g)];
  for (const time of times) expect(time[1], `${where}: ${time[0]} without its relative time`).toBeDefined();
}

/** Lines of a table, split in cells. */
function rows(text: string): string[][] {
  return text
    .trimEnd()
    .split('\n')
    .map((line) => line.split(/\s{2,}/));
}

describe('the control-plane CLI convention', () => {
  let h: Harness;
  let dir: string;
  let conv: string;
  let drainme: string;
  let spare: string;
  const mail = new ScriptedModule();

  /** Runs `control-plane <args>` against the harness (the admin token from the environment); checks nothing secret is printed. */
  async function cli(args: string[], env: Record<string, string> = {}, stdin?: string): Promise<CliRun> {
    record(args);
    const run = await runControlPlaneCli(args, { PATH: process.env.PATH ?? '', TETHER_SERVER: h.target, TETHER_ADMIN_TOKEN: h.adminToken, ...env }, stdin);
    assertNoSecrets(run.stdout + run.stderr, [h.adminToken], `control-plane ${args.join(' ')}`);
    return run;
  }

  /** Runs it, expects exit 0, and returns stdout: parsed and checked if `-o json`, else checked as a table. */
  async function ok(args: string[], stdin?: string): Promise<string> {
    const run = await cli(args, {}, stdin);
    expect(run.status, `control-plane ${args.join(' ')}\n${run.stderr}`).toBe(0);
    if (args.includes('json')) assertConventionalJson(JSON.parse(run.stdout), args.join(' '));
    else if (args.includes('jsonl')) for (const line of run.stdout.trimEnd().split('\n')) assertConventionalJson(JSON.parse(line), args.join(' '));
    else assertConventionalTable(run.stdout, args.join(' '));
    return run.stdout;
  }

  async function json<T>(args: string[], stdin?: string): Promise<T> {
    return JSON.parse(await ok([...args, '-o', 'json'], stdin)) as T;
  }

  beforeAll(async () => {
    h = await Harness.start({ maxDeliveryAttempts: 1 });
    dir = mkdtempSync(join(tmpdir(), 'tether-conv-'));
    ({ hostId: conv } = await h.startHost('conv', {
      capacity: 10,
      labels: [{ key: 'zone', value: 'a' }],
      modules: new Map([['idle', idleModule], ['mail', mail.module]]),
      // Allowed, so `agents ensure --command` is accepted; it does not exist, so the agent fails (that is not what is tested).
      allowedCommands: ['/no/such/agent'],
      agentsDir: join(dir, 'agents'),
    }));
    const first = h.hosts[0];
    if (first === undefined) throw new Error('no host');
    await h.dispatch(first, conv, 'a1');
    await h.dispatch(first, conv, 'inbox', 'mail');
    await h.dispatch(first, conv, 'mail', 'mail');
    // An ensured agent only `drainme` can take (its label), then `spare`, which can take it too, for the drain.
    ({ hostId: drainme } = await h.startHost('drainme', { labels: [{ key: 'pool', value: 'd' }] }));
    await call(h.admin.ensureAgent.bind(h.admin), { agentId: 'movable', name: '', hostId: '', hostLabels: [{ key: 'pool', value: 'd' }], spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' }, update: false });
    await waitUntil(async () => (await h.store.getAgent('movable'))?.state === 'running', 'movable running on drainme');
    ({ hostId: spare } = await h.startHost('spare', { labels: [{ key: 'pool', value: 'd' }] }));
  });

  afterAll(async () => {
    mail.openAll();
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('lists and describes hosts, agents, keys and the JWKS in every format; not found is 3, a wrong token 4, usage 2, no control plane 1', async () => {
    const [hostsTable, hostsWide, hostsJson, hostsJsonl, describedTable, describedJson, agentsTable, agentsWide, agentsJson, agentsJsonl, describeAgent, describeAgentJson, keysTable, keysJson, jwksTable, jwksJson] =
      await Promise.all([
        ok(['hosts', 'ls']),
        ok(['hosts', 'ls', '-o', 'wide']),
        json<Record<string, unknown>[]>(['hosts', 'ls']),
        ok(['hosts', 'ls', '--output', 'jsonl']),
        ok(['hosts', 'describe', 'conv']),
        json<{ host: Record<string, unknown>; agents: Record<string, unknown>[] }>(['hosts', 'describe', conv]),
        ok(['agents', 'ls']),
        ok(['agents', 'ls', '-o', 'wide']),
        json<Record<string, unknown>[]>(['agents', 'ls', '--host', conv]),
        ok(['agents', 'ls', '-o', 'jsonl']),
        ok(['agents', 'describe', 'a1']),
        json<{ agent: Record<string, unknown>; transitions: Record<string, unknown>[] }>(['agents', 'describe', 'a1']),
        ok(['keys', 'ls']),
        json<Record<string, unknown>[]>(['keys', 'ls']),
        ok(['jwks']),
        json<{ keys: Record<string, unknown>[] }>(['jwks', '--purpose', 'tokens']),
      ]);
    // hosts ls: every host, lowercase states; wide adds NAME and LABELS; jsonl is one host a line.
    expect(rows(hostsTable)[0]?.slice(0, 6)).toEqual(['HOST', 'STATE', 'CONNECTED', 'SCHEDULABLE', 'DRAIN', 'AGENTS']);
    expect(rows(hostsTable).slice(1).map((r) => [r[0], r[1], r[2]]).sort()).toEqual([[conv, 'active', 'true'], [drainme, 'active', 'true'], [spare, 'active', 'true']].sort());
    expect(rows(hostsTable)[0]).not.toContain('LABELS');
    expect(rows(hostsWide)[0]).toEqual(expect.arrayContaining(['NAME', 'LABELS']));
    expect(hostsWide).toMatch(new RegExp(`^${conv}\\s+conv\\s+active\\s.*zone=a`, 'm'));
    expect(hostsJson.map((x) => x.hostId).sort()).toEqual([conv, drainme, spare].sort());
    expect(hostsJson.find((x) => x.hostId === conv)).toMatchObject({ name: 'conv', state: 'active', connected: true, capacity: 10, agents: 3, schedulable: true, labels: [{ key: 'zone', value: 'a' }] });
    expect(hostsJson.find((x) => x.hostId === conv)?.credentialExpiresAt).toMatch(ISO);
    expect(hostsJsonl.trimEnd().split('\n').map((line) => (JSON.parse(line) as { hostId: string }).hostId).sort()).toEqual([conv, drainme, spare].sort());

    // hosts describe: by name or id; the host's record and the agents on it.
    expect(describedTable).toMatch(new RegExp(`^HOST\\s+${conv}$`, 'm'));
    expect(describedTable).toMatch(/^LOAD\s+3 of 10 agents$/m);
    expect(describedTable).toMatch(/^LABELS\s+zone=a$/m);
    expect(describedTable).toMatch(/^CREDENTIAL\s+generation \d+ \(expires \d{4}-.* \((in|\d).*\)\)$/m);
    expect(describedTable).toMatch(/^a1\s+running\s/m);
    expect(describedJson.host).toMatchObject({ hostId: conv, name: 'conv', state: 'active', connected: true, schedulable: true, drainState: '' });
    expect(describedJson.agents.map((a) => [a.agentId, a.state]).sort()).toEqual([['a1', 'running'], ['inbox', 'running'], ['mail', 'running']]);

    // agents ls: every agent (all hosts), or one host's; states as words.
    expect(rows(agentsTable).slice(1).map((r) => [r[0], r[1]]).sort()).toEqual([['a1', 'running'], ['inbox', 'running'], ['mail', 'running'], ['movable', 'running']]);
    expect(rows(agentsWide)[0]).toEqual(expect.arrayContaining(['NAME', 'RESTART_POLICY', 'DETAIL']));
    expect(agentsJson.map((a) => a.agentId).sort()).toEqual(['a1', 'inbox', 'mail']);
    expect(agentsJson.find((a) => a.agentId === 'a1')).toMatchObject({ state: 'running', hostId: conv, createdAt: expect.stringMatching(ISO) });
    expect(agentsJsonl.trimEnd().split('\n')).toHaveLength(4);

    // agents describe: the record and its transitions, states as words.
    expect(describeAgent).toMatch(/^STATE\s+running$/m);
    expect(describeAgent).toMatch(/^TIME\s+FROM\s+TO\s+HOST\s+INCARNATION\s+REASON$/m);
    expect(describeAgentJson.agent).toMatchObject({ agentId: 'a1', state: 'running', hostId: conv, incarnation: 1 });
    expect(describeAgentJson.transitions.map((t) => `${String(t.fromState)}>${String(t.toState)}`)).toEqual(['null>pending', 'pending>starting', 'starting>running']);

    // keys ls and jwks: the signer and the standby.
    expect(rows(keysTable)[0]?.slice(0, 4)).toEqual(['KEY', 'PURPOSE', 'ALG', 'STATE']);
    expect(rows(keysTable).slice(1).map((r) => [r[1], r[3]]).sort()).toEqual([['tokens', 'signing'], ['tokens', 'standby']]);
    expect(keysJson.map((k) => k.state).sort()).toEqual(['signing', 'standby']);
    expect(keysJson.find((k) => k.state === 'standby')).toMatchObject({ signingSince: null, createdAt: expect.stringMatching(ISO) });
    expect(rows(jwksTable)[0]).toEqual(['KID', 'KTY', 'ALG', 'USE']);
    expect(jwksJson.keys.map((k) => k.kid).sort()).toEqual(keysJson.map((k) => k.keyId).sort());
    expect(rows(jwksTable).slice(1).map((r) => r[0]).sort()).toEqual(keysJson.map((k) => k.keyId).sort());

    // The documented exit statuses, each one clear line on stderr.
    const [noAgent, noHost, noKey, wrongToken, badFormat, noModule, unreachable, noToken] = await Promise.all([
      cli(['agents', 'describe', 'nope']),
      cli(['hosts', 'describe', 'nope', '-o', 'json']),
      cli(['keys', 'revoke', 'nope']),
      cli(['agents', 'ls'], { TETHER_ADMIN_TOKEN: 'not-the-admin-token' }),
      cli(['agents', 'ls', '-o', 'yaml']),
      cli(['agents', 'dispatch', '--id', 'x']),
      cli(['agents', 'ls', '--server', '127.0.0.1:1']),
      cli(['agents', 'ls', '--data-dir', dir], { TETHER_ADMIN_TOKEN: '' }),
    ]);
    expect([noAgent.status, noAgent.stderr]).toEqual([EXIT.notFound, 'error: not found: no agent nope\n']);
    expect([noHost.status, noHost.stdout, noHost.stderr]).toEqual([EXIT.notFound, '', 'error: not found: no host nope (see `hosts ls`)\n']);
    expect([noKey.status, noKey.stderr.split('\n').length]).toEqual([EXIT.notFound, 2]);
    expect(wrongToken.status).toBe(EXIT.refused);
    expect(wrongToken.stderr).toMatch(/^error: the control plane refused the admin token .*: check --admin-token-file \/ TETHER_ADMIN_TOKEN_FILE \/ TETHER_ADMIN_TOKEN\n$/);
    expect(wrongToken.stderr).not.toContain('not-the-admin-token');
    expect(badFormat.status).toBe(EXIT.usage);
    expect(badFormat.stderr).toContain("argument 'yaml' is invalid. Allowed choices are table, wide, json, jsonl");
    expect([noModule.status, noModule.stderr]).toEqual([EXIT.usage, 'error: give exactly one of --module or --command\n']);
    expect(unreachable.status).toBe(EXIT.failure);
    expect(unreachable.stderr).toBe('error: cannot reach the control plane at 127.0.0.1:1 (is it running? check --server / TETHER_SERVER, and --ca-file for TLS)\n');
    expect(noToken.status).toBe(EXIT.usage);
    expect(noToken.stderr).toMatch(/^error: no admin token: give --admin-token-file/);
  });

  it('dispatches, ensures, rotates, stops, sends and handles dead letters, printing a table or JSON', async () => {
    const payload = join(dir, 'payload');
    writeFileSync(payload, 'from a file');
    mail.hold('inbox', 'held');
    mail.refuse('mail', 'bad');
    // The first message to inbox is held by its agent: those after it stay unacknowledged too.
    const sentJson = await json<Record<string, unknown>>(['send', 'inbox', '--data', 'held', '--content-type', 'text/plain', '--idempotency-key', 'k1']);
    const [dispatched, dispatchedTable, ensured, rotated, rotatedJson, sentTable, sentStdin, badOne, badTwo] = await Promise.all([
      json<Record<string, unknown>>(['agents', 'dispatch', '--id', 'd1', '--module', 'idle', '--name', 'first', '--host', conv, '--restart', 'never', '--config', '{"a":1}', '--handler-deadline', '2m']),
      ok(['agents', 'dispatch', '--id', 'p1', '--command', '/no/such/agent', '--arg', 'x', '--audience-file', 'billing=https://billing.example', '--label', 'zone=nowhere']),
      ok(['agents', 'ensure', 'e1', '--module', 'idle', '--label', 'zone=a', '--restart', 'always']),
      ok(['agents', 'rotate', 'a1']),
      json<Record<string, unknown>>(['agents', 'rotate', 'mail']),
      ok(['send', 'inbox', '--file', payload]),
      ok(['send', 'inbox'], 'from stdin'),
      json<{ seq: number }>(['send', 'mail', '--data', 'bad']),
      json<{ seq: number }>(['send', 'mail', '--data', 'bad']),
    ]);
    expect(dispatched).toMatchObject({ agentId: 'd1', name: 'first', state: expect.stringMatching(/^(pending|starting|running)$/), requestedHostId: conv, restartPolicy: 'never', spec: { kind: 'module', module: 'idle', config: '{"a":1}' } });
    expect((await h.store.getAgent('d1'))?.spec.handlerDeadlineMs).toBe(120_000);
    expect(dispatchedTable).toMatch(/^AGENT\s+p1$/m);
    expect(dispatchedTable).toMatch(/^STATE\s+pending$/m);
    expect(dispatchedTable).toMatch(/^DETAIL\s+.*zone=nowhere/m);
    expect((await h.store.getAgent('p1'))?.spec).toMatchObject({ kind: 'process', command: '/no/such/agent', args: ['x'] });
    expect(JSON.stringify((await h.store.getAgent('p1'))?.spec)).toContain('https://billing.example');
    expect(ensured).toMatch(/^CREATED\s+true$/m);
    expect(ensured).toMatch(/^RESTART_POLICY\s+always$/m);
    expect(rotated).toMatch(/^AGENT_ID\s+a1$/m);
    expect(rotated).toMatch(/^GENERATION\s+\d+$/m);
    expect(rotatedJson).toEqual({ agentId: 'mail', generation: expect.any(Number), expiresAt: expect.stringMatching(ISO) });
    expect(sentJson).toEqual({ agentId: 'inbox', id: expect.any(String), seq: 1, duplicate: false });
    expect(sentTable).toMatch(/^SEQ\s+[23]$/m);
    expect(sentStdin).toMatch(/^DUPLICATE\s+false$/m);
    expect([badOne.seq, badTwo.seq].sort()).toEqual([1, 2]);

    // The same idempotency key: the first send's id and seq.
    const again = await json<Record<string, unknown>>(['send', 'inbox', '--data', 'again', '--idempotency-key', 'k1']);
    expect(again).toEqual({ ...sentJson, duplicate: true });
    const [pending, pendingTable] = await Promise.all([json<Record<string, unknown>[]>(['messages', 'ls', 'inbox']), ok(['messages', 'ls', 'inbox'])]);
    expect(pending.map((m) => [m.seq, m.state])).toEqual([[1, 'pending'], [2, 'pending'], [3, 'pending']]);
    expect(pending[0]).toMatchObject({ contentType: 'text/plain', from: 'operator', createdAt: expect.stringMatching(ISO) });
    expect(rows(pendingTable).slice(1).map((r) => r[0])).toEqual(['1', '2', '3']);

    // Dead letters: listed, requeued (a new seq; refused again, so dead again), purged.
    const deadOf = async (): Promise<number[]> => (await call(h.admin.listMessages.bind(h.admin), { agentId: 'mail', state: 'dead', pageSize: 0, pageToken: '' })).messages.map((m) => m.seq);
    await waitUntil(async () => (await deadOf()).length === 2, 'two dead letters');
    const [dead, deadTable] = await Promise.all([json<Record<string, unknown>[]>(['messages', 'ls', 'mail', '--dead']), ok(['messages', 'ls', 'mail', '--dead'])]);
    expect(dead.map((m) => [m.seq, m.state, m.attempts])).toEqual([[1, 'dead', 1], [2, 'dead', 1]]);
    expect(rows(deadTable).slice(1).map((r) => [r[0], r[2]])).toEqual([['1', 'dead'], ['2', 'dead']]);
    const [requeued, purgedTable] = await Promise.all([json<Record<string, unknown>>(['messages', 'requeue', 'mail', '1']), ok(['messages', 'purge', 'mail', '2'])]);
    expect(requeued).toEqual({ agentId: 'mail', seq: 1, newSeq: 3 });
    expect(purgedTable).toMatch(/^PURGED\s+true$/m);
    await waitUntil(async () => (await deadOf()).join() === '3', 'the requeued letter dead again');
    expect(await ok(['messages', 'requeue', 'mail', '3'])).toMatch(/^NEW_SEQ\s+4$/m);
    await waitUntil(async () => (await deadOf()).join() === '4', 'dead once more');
    expect(await json<Record<string, unknown>>(['messages', 'purge', 'mail', '4'])).toEqual({ agentId: 'mail', seq: 4, purged: true });
    expect(await deadOf()).toEqual([]);

    // ensure: a different spec is refused (4); --update replaces it. stop: the agent, stopped.
    const refused = await cli(['agents', 'ensure', 'e1', '--module', 'mail', '--label', 'zone=a']);
    expect(refused.status).toBe(EXIT.refused);
    expect(refused.stderr).toMatch(/^error: refused: agent e1 exists with a different spec \(differs in spec\.module\); ensure it with --update[^\n]*\n$/);
    const [updated, stopped, stoppedTable, ensuredProcess] = await Promise.all([
      json<{ created: boolean; updated: boolean; agent: Record<string, unknown> }>(['agents', 'ensure', 'e1', '--module', 'mail', '--label', 'zone=a', '--update']),
      json<Record<string, unknown>>(['agents', 'stop', 'd1', '--reason', 'done with it']),
      ok(['agents', 'stop', 'p1']),
      json<{ created: boolean; agent: Record<string, unknown> }>(['agents', 'ensure', 'p2', '--command', '/no/such/agent', '--arg', 'y', '--audience-file', 'ledger=https://ledger.example', '--config', '{}', '--name', 'second', '--host', conv, '--handler-deadline', '0']),
    ]);
    expect(ensuredProcess).toMatchObject({ created: true, agent: { agentId: 'p2', name: 'second', requestedHostId: conv, restartPolicy: 'on-failure', spec: { kind: 'process', command: '/no/such/agent', args: ['y'], config: '{}', handlerDeadlineMs: 0 } } });
    expect(updated).toMatchObject({ updated: true, agent: { agentId: 'e1', spec: { module: 'mail' } } });
    expect(stopped).toMatchObject({ agentId: 'd1', state: 'stopped' });
    expect(stoppedTable).toMatch(/^STATE\s+stopped$/m);
    const d1 = await call(h.admin.describeAgent.bind(h.admin), { agentId: 'd1' });
    expect(d1.transitions.at(-1)?.reason).toContain('done with it');
  });

  it('drains (0 when drained, 5 when agents are left blocked), uncordons, revokes and enrolls hosts', async () => {
    const drained = await cli(['hosts', 'drain', drainme]);
    expect(drained.status, drained.stderr).toBe(EXIT.ok);
    expect(drained.stdout).toBe(`movable: moved to ${spare}\n`);
    expect(drained.stderr).toBe(`host ${drainme}: drained; 1 moved, 0 blocked, 0 staying\n`);
    const watched = await cli(['hosts', 'drain', drainme, '--no-wait', '-o', 'jsonl']);
    expect(watched.status).toBe(EXIT.ok);
    // Asked again, the drain starts over (nothing left to move) and --no-wait prints where it stands: the last line is the drain.
    expect(JSON.parse(watched.stdout.trimEnd().split('\n').at(-1) as string)).toMatchObject({ hostId: drainme, state: expect.stringMatching(/^(draining|drained)$/), blocked: 0, stays: 0 });
    // Now spare: the one host that carries pool=d is drained, so the agent is blocked: exit 5, one JSON document.
    await waitUntil(async () => (await h.store.getAgent('movable'))?.state === 'running', 'movable running on spare');
    const blocked = await cli(['hosts', 'drain', spare, '-o', 'json']);
    expect(blocked.status, blocked.stderr).toBe(EXIT.unfinished);
    const blockedJson = JSON.parse(blocked.stdout) as { state: string; blocked: number; agents: { agentId: string; outcome: string; reason: string }[] };
    assertConventionalJson(blockedJson, 'hosts drain -o json');
    expect(blockedJson).toMatchObject({ state: 'draining', blocked: 1, agents: [{ agentId: 'movable', outcome: 'blocked' }] });
    // One after the other: drainme schedulable again would let the blocked agent move, and spare's drain end.
    const uncordonedTable = await ok(['hosts', 'uncordon', spare]);
    const uncordoned = await json<Record<string, unknown>>(['hosts', 'uncordon', drainme]);
    expect(uncordonedTable).toMatch(/^PREVIOUS_DRAIN_STATE\s+draining$/m);
    expect(uncordoned).toEqual({ hostId: drainme, schedulable: true, previousDrainState: 'drained' });

    // enroll: the join token on stdout (or in --token-file, with the host id on stdout); revoke: refused for good.
    const tokenFile = join(dir, 'join-token');
    const [enrolled, enrolledToFile] = await Promise.all([cli(['hosts', 'enroll', 'later']), cli(['hosts', 'enroll', 'later-too', '--join-ttl', '5m', '--token-file', tokenFile])]);
    expect(enrolled.status, enrolled.stderr).toBe(0);
    expect(enrolled.stdout).toMatch(/^[\w-]+\.[\w-]+\n$/);
    expect(enrolled.stderr).toMatch(/^host \S+ enrolled; join token valid until \d{4}-.*Z \((in \S+|\S+ ago)\) \(shown once\):\n$/);
    expect(enrolledToFile.status, enrolledToFile.stderr).toBe(0);
    expect(enrolledToFile.stderr).toContain(`valid until ${new Date(h.clock.now() + 300_000).toISOString()} (`);
    const laterToo = enrolledToFile.stdout.trim();
    expect(readFileSync(tokenFile, 'utf8').startsWith(`${laterToo}.`)).toBe(true);
    const later = (enrolled.stdout.split('.')[0] as string).trim();
    const [revokedTable, revoked] = await Promise.all([ok(['hosts', 'revoke', later]), json<Record<string, unknown>>(['hosts', 'revoke', laterToo])]);
    expect(revokedTable).toMatch(/^REVOKED\s+true$/m);
    expect(revoked).toEqual({ hostId: laterToo, revoked: true, agentsMoved: 0 });
    expect((await json<Record<string, unknown>[]>(['hosts', 'ls'])).filter((x) => x.state === 'revoked').map((x) => x.hostId).sort()).toEqual([later, laterToo].sort());
  });

  it('rotates and revokes signing keys; a rotation too soon is refused (4)', async () => {
    const early = await cli(['keys', 'rotate']);
    expect(early.status).toBe(EXIT.refused);
    expect(early.stderr).toMatch(/^error: refused: .*JWKS cache lifetime/);
    h.clock.advance(JWKS_MAX_AGE_MS + 1);
    const first = await json<{ keyId: string; retiredKeyId: string; retiredVerifiesUntil: string; standbyKeyId: string }>(['keys', 'rotate', '--purpose', 'tokens']);
    expect(first.retiredVerifiesUntil).toMatch(ISO);
    h.clock.advance(JWKS_MAX_AGE_MS + 1);
    const second = await ok(['keys', 'rotate']);
    expect(second).toMatch(new RegExp(`^RETIRED_KEY_ID\\s+${first.keyId}$`, 'm'));
    const [revokedTable, revoked] = await Promise.all([ok(['keys', 'revoke', first.retiredKeyId]), json<Record<string, unknown>>(['keys', 'revoke', first.keyId])]);
    expect(revokedTable).toMatch(/^REVOKED\s+true$/m);
    expect(revoked).toMatchObject({ keyId: first.keyId, revoked: true });
    const states = await json<{ keyId: string; state: string }[]>(['keys', 'ls']);
    expect(states.filter((k) => k.state === 'revoked').map((k) => k.keyId).sort()).toEqual([first.keyId, first.retiredKeyId].sort());
  });

  it('adds, lists and retires admin tokens and prints the audit log; a viewer is refused with exit 4 and one clear line', async () => {
    const tokenFile = join(dir, 'viewer-token');
    const [added, addedToFile] = await Promise.all([cli(['tokens', 'add', '--role', 'admin', '--name', 'ops']), cli(['tokens', 'add', '--name', 'ci', '--token-file', tokenFile])]);
    expect(added.status, added.stderr).toBe(0);
    expect(added.stdout).toMatch(/^tadm_[0-9a-f]{16}\.[\w-]{43}\n$/);
    expect(added.stderr).toMatch(/^admin token [0-9a-f]{16} \(admin\) added \(shown once\):\n$/);
    expect(addedToFile.status, addedToFile.stderr).toBe(0);
    const viewerId = addedToFile.stdout.trim();
    expect(addedToFile.stderr).toBe(`admin token ${viewerId} (viewer) added, written to ${tokenFile}\n`);
    const viewer = readFileSync(tokenFile, 'utf8').trim();
    expect(viewer.startsWith(`tadm_${viewerId}.`)).toBe(true);
    const asViewer = async (args: string[]): Promise<CliRun> => {
      const run = await cli(args, { TETHER_ADMIN_TOKEN: viewer });
      assertNoSecrets(run.stdout + run.stderr, [viewer], `control-plane ${args.join(' ')} as the viewer`);
      return run;
    };
    const [viewerLs, viewerStop, viewerAudit] = await Promise.all([asViewer(['agents', 'ls', '-o', 'json']), asViewer(['agents', 'stop', 'a1']), asViewer(['audit'])]);
    expect(viewerLs.status, viewerLs.stderr).toBe(EXIT.ok);
    expect([viewerStop.status, viewerStop.stderr]).toEqual([EXIT.refused, `error: permission denied: StopAgent needs the admin role; admin token ${viewerId} has the viewer role\n`]);
    expect(viewerAudit.status).toBe(EXIT.refused);

    const [listed, listedTable, listedWide] = await Promise.all([json<Record<string, unknown>[]>(['tokens', 'ls']), ok(['tokens', 'ls']), ok(['tokens', 'ls', '-o', 'wide'])]);
    expect(listed[0]).toMatchObject({ tokenId: 'bootstrap', role: 'admin', state: 'valid', retiredAt: null });
    expect(listed.find((t) => t.tokenId === viewerId)).toMatchObject({ role: 'viewer', name: 'ci', state: 'valid', createdBy: 'bootstrap', createdAt: expect.stringMatching(ISO) });
    expect(JSON.stringify(listed)).not.toMatch(/secret|hash/i);
    expect(rows(listedTable)[0]).toEqual(['TOKEN', 'ROLE', 'STATE', 'NAME', 'CREATED', 'RETIRED']);
    expect(rows(listedWide)[0]).toContain('CREATED_BY');
    const [retiredTable, retiredAgain] = await Promise.all([ok(['tokens', 'retire', viewerId]), json<Record<string, unknown>>(['tokens', 'retire', viewerId])]);
    expect(retiredTable).toMatch(/^STATE\s+retired$/m);
    expect(retiredAgain).toMatchObject({ tokenId: viewerId, state: 'retired', retiredAt: expect.stringMatching(ISO) });
    const afterRetire = await asViewer(['agents', 'ls']);
    expect(afterRetire.status).toBe(EXIT.refused);
    expect(afterRetire.stderr).toContain(`admin token ${viewerId} is retired`);
    const bootstrapRetire = await cli(['tokens', 'retire', 'bootstrap']);
    expect([bootstrapRetire.status, bootstrapRetire.stderr]).toEqual([EXIT.refused, expect.stringMatching(/^error: refused: the bootstrap token cannot be retired through the API/)]);

    // The audit log: the viewer's calls, allowed and refused, by token and in every format.
    const [audited, auditTable, auditWide, auditJsonl] = await Promise.all([
      json<{ tokenId: string; method: string; status: string; targets: { kind: string; id: string }[] }[]>(['audit', '--token', viewerId, '--since', '1h']),
      ok(['audit']),
      ok(['audit', '-o', 'wide']),
      ok(['audit', '--token', 'bootstrap', '-o', 'jsonl']),
    ]);
    expect(audited.map((r) => [r.method, r.status]).sort()).toEqual([['ListAgents', 'OK'], ['ListAuditRecords', 'PERMISSION_DENIED'], ['StopAgent', 'PERMISSION_DENIED']]);
    expect(audited.find((r) => r.method === 'StopAgent')?.targets).toEqual([{ kind: 'agent', id: 'a1' }]);
    expect(rows(auditTable)[0]).toEqual(['TIME', 'TOKEN', 'METHOD', 'TARGETS', 'STATUS']);
    expect(auditTable).toMatch(new RegExp(`\\s${viewerId}\\s+StopAgent\\s+agent=a1\\s+PERMISSION_DENIED$`, 'm'));
    expect(rows(auditWide)[0]?.[0]).toBe('ID');
    expect(auditJsonl.trimEnd().split('\n').every((line) => (JSON.parse(line) as { tokenId: string }).tokenId === 'bootstrap')).toBe(true);
    assertNoSecrets(auditTable + auditWide + auditJsonl, [viewer, added.stdout.trim(), h.adminToken], 'control-plane audit');
  });

  it('watches events: the kept ones after --after-id, filtered by agent, host and kind, --count of them, in every format; then live ones', async () => {
    const [firstThree, a1Table, hostWide, oneJson, badKind, pastNewest] = await Promise.all([
      ok(['watch', '--after-id', '0', '--count', '3', '-o', 'jsonl']),
      ok(['watch', '--agent', 'a1', '--kind', 'agent.placed', '--kind', 'agent.started', '--after-id', '0', '--count', '2']),
      ok(['watch', '--host', conv, '--kind', 'agent.placed', '--after-id', '0', '--count', '1', '-o', 'wide']),
      json<Record<string, unknown>>(['watch', '--kind', 'agent.placed', '--after-id', '0', '--count', '1']),
      cli(['watch', '--kind', 'agent.exploded']),
      cli(['watch', '--after-id', '999999999', '--no-reconnect']),
    ]);
    const events = firstThree.trimEnd().split('\n').map((line) => JSON.parse(line) as { id: number; kind: string; at: string });
    expect(events.map((e) => e.id)).toEqual([1, 2, 3]);
    expect(events[0]).toMatchObject({ kind: 'host.connected', hostId: conv, at: expect.stringMatching(ISO) });
    expect(a1Table).toMatch(new RegExp(`^\\d+\\s+\\S+ \\(.*\\)\\s+agent\\.placed\\s+agent=a1\\s+host=${conv}\\s`, 'm'));
    expect(a1Table.trimEnd().split('\n').map((line) => line.split(/\s{2,}/)[2])).toEqual(['agent.placed', 'agent.started']);
    expect(hostWide).toMatch(/\sincarnation=1\s+generation=0\s/);
    expect(oneJson).toMatchObject({ kind: 'agent.placed', agentId: expect.any(String), hostId: conv, incarnation: 1, at: expect.stringMatching(ISO) });
    expect(badKind.status).toBe(EXIT.usage);
    expect(badKind.stderr).toContain('unknown kind agent.exploded');
    expect([pastNewest.status, pastNewest.stderr]).toEqual([EXIT.usage, expect.stringMatching(/^error: invalid request: after_event_id 999999999 is past the newest event/)]);
    // Live: from the last id now, the next forced rotation of a1 (however soon it comes, it is after that id).
    await h.cp.eventLog.flush();
    const live = cli(['watch', '--agent', 'a1', '--kind', 'credential.rotated', '--after-id', String(h.cp.eventLog.lastId), '--count', '1', '-o', 'jsonl']);
    await call(h.admin.rotateAgentCredential.bind(h.admin), { agentId: 'a1' });
    const rotated = await live;
    expect(rotated.status, rotated.stderr).toBe(EXIT.ok);
    expect(JSON.parse(rotated.stdout)).toMatchObject({ kind: 'credential.rotated', agentId: 'a1', reason: 'forced' });
  });

  it('every option each admin command lists was used above; every group names its subcommands; every help shows the exit statuses', () => {
    const program = controlPlaneProgram();
    const leaves = allCommands(program).filter((c) => c.commands.length === 0 && c.parent !== null && !LOCAL_COMMANDS.includes(c.name()));
    const missing = leaves.flatMap((command) => {
      const words = used.get(pathOf(command).join(' '));
      if (words === undefined) return [`${pathOf(command).join(' ')} (never run)`];
      return command.options.filter((o) => !(words.has(o.long as string) || (o.short !== undefined && words.has(o.short)))).map((o) => `${pathOf(command).join(' ')} ${o.long}`);
    });
    expect(missing).toEqual([]);
    // Each command that prints data takes -o; hosts enroll and tokens add print a secret (or an id) and take none.
    expect(leaves.filter((c) => !c.options.some((o) => o.long === '--output')).map((c) => pathOf(c).join(' '))).toEqual(['hosts enroll', 'tokens add']);
    for (const group of allCommands(program).filter((c) => c.parent !== null && c.commands.length > 0)) {
      for (const sub of group.commands) expect(group.description(), `${group.name()} --help`).toContain(sub.name() === 'ls' ? 'list' : sub.name());
    }
    const serve = program.commands.find((c) => c.name() === 'serve') as Command;
    expect(serve.helpInformation()).toMatch(/JWKS[^]*\/metrics[^]*\/healthz/);
    let help = '';
    for (const command of allCommands(program)) {
      command.configureOutput({ writeOut: (text) => (help = text) });
      command.outputHelp();
      expect(help, pathOf(command).join(' ')).toContain('Exit status:\n  0  ok');
    }
  });
});
