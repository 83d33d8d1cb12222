/**
 * The `control-plane` binary's mail commands, run for real (`node
 * bin/control-plane.js ...`) against a control plane and host in this process:
 * `send` (from --data, --file and stdin) and `messages ls|requeue|purge`.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runControlPlaneCli, type CliRun } from '../../support/control-plane-cli.js';
import { call, Harness } from '../../support/harness.js';
import { ScriptedModule } from '../../support/scripted-module.js';
import { waitUntil } from '../../support/wait.js';

/** Runs `control-plane <args>` against `harness` (server and admin token from the environment), feeding `stdin` if given. */
function cli(harness: Harness, args: string[], stdin?: string): Promise<CliRun> {
  return runControlPlaneCli(args, { ...process.env, TETHER_SERVER: harness.target, TETHER_ADMIN_TOKEN: harness.adminToken, TETHER_ADMIN_TOKEN_FILE: '' }, stdin);
}

/** Runs the binary and expects it to succeed; returns what it printed on stdout. */
async function ok(harness: Harness, args: string[], stdin?: string): Promise<string> {
  const run = await cli(harness, args, stdin);
  expect(run.status, `control-plane ${args.join(' ')}\n${run.stderr}`).toBe(0);
  return run.stdout;
}

/** How many dead letters 'cli-agent' has, asked over the harness's own admin client. */
async function deadLetters(harness: Harness): Promise<number> {
  return (await call(harness.admin.listMessages.bind(harness.admin), { agentId: 'cli-agent', state: 'dead', pageSize: 0, pageToken: '' })).messages.length;
}

describe('control-plane send / messages', () => {
  let harness: Harness | undefined;
  let scripted: ScriptedModule | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    scripted?.openAll();
    await harness?.close();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    harness = undefined;
    scripted = undefined;
    dir = undefined;
  });

  /** A control plane (a message is dead after one refusal) and a host running 'cli-agent'. */
  async function setUp(): Promise<{ harness: Harness; scripted: ScriptedModule }> {
    const h = await Harness.start({ maxDeliveryAttempts: 1 });
    const module = new ScriptedModule();
    const { host, hostId } = await h.startHost('cli', { modules: new Map([['scripted', module.module]]) });
    await h.dispatch(host, hostId, 'cli-agent', 'scripted');
    return { harness: h, scripted: module };
  }

  it('sends from --data, --file and stdin, and lists what is not acknowledged yet', async () => {
    ({ harness, scripted } = await setUp());
    const mail = scripted;
    // The agent holds the first message, so everything sent stays unacknowledged for `messages ls`.
    const gate = mail.hold('cli-agent', 'hello');
    dir = mkdtempSync(join(tmpdir(), 'tether-cli-'));
    const file = join(dir, 'payload.json');
    writeFileSync(file, '{"from":"a file"}');

    const fromData = JSON.parse(await ok(harness, ['send', 'cli-agent', '--data', 'hello', '--content-type', 'text/plain', '-o', 'json'])) as Record<string, unknown>;
    expect(fromData).toEqual({ agentId: 'cli-agent', id: expect.any(String), seq: 1, duplicate: false });
    expect(JSON.parse(await ok(harness, ['send', 'cli-agent', '--file', file, '--content-type', 'application/json', '-o', 'json']))).toMatchObject({ seq: 2 });
    const fromStdin = JSON.parse(await ok(harness, ['send', 'cli-agent', '--idempotency-key', 'k1', '-o', 'json'], 'piped in')) as Record<string, unknown>;
    expect(fromStdin).toMatchObject({ seq: 3, duplicate: false });
    // The same key again: the first send's id and seq, nothing appended.
    expect(JSON.parse(await ok(harness, ['send', 'cli-agent', '--idempotency-key', 'k1', '--data', 'again', '-o', 'json']))).toEqual({ ...fromStdin, duplicate: true });

    const listed = JSON.parse(await ok(harness, ['messages', 'ls', 'cli-agent', '-o', 'json'])) as Record<string, unknown>[];
    expect(listed.map((m) => [m.seq, m.state, m.contentType, m.sizeBytes, m.from])).toEqual([
      [1, 'pending', 'text/plain', 5, 'operator'],
      [2, 'pending', 'application/json', 17, 'operator'],
      [3, 'pending', 'application/octet-stream', 8, 'operator'],
    ]);
    expect(listed[0]?.id).toBe(fromData.id);
    const table = (await ok(harness, ['messages', 'ls', 'cli-agent'])).trimEnd().split('\n');
    expect(table[0]).toMatch(/^SEQ\s+ID\s+STATE\s+ATTEMPTS\s+BYTES\s+FROM\s+CONTENT_TYPE\s+CREATED\s+LAST_ERROR$/);
    expect(table.slice(1).map((line) => line.split(/\s+/).slice(0, 3))).toEqual([
      ['1', String(fromData.id), 'pending'],
      ['2', expect.any(String), 'pending'],
      ['3', String(fromStdin.id), 'pending'],
    ]);

    // What the agent got, once it lets go of the first message.
    gate.open();
    await waitUntil(() => mail.taken('cli-agent').length >= 3, 'the three messages taken');
    expect(mail.of('cli-agent').map((r) => [r.payload, r.contentType])).toEqual([
      ['hello', 'text/plain'],
      ['{"from":"a file"}', 'application/json'],
      ['piped in', 'application/octet-stream'],
    ]);
  });

  it('lists dead letters, requeues one and purges another; failures are one line and their exit status', async () => {
    ({ harness, scripted } = await setUp());
    const mail = scripted;
    dir = mkdtempSync(join(tmpdir(), 'tether-cli-'));
    const file = join(dir, 'payload.txt');
    writeFileSync(file, 'x');
    // One refusal is enough for a dead letter here.
    mail.refuse('cli-agent', 'bad');
    const bad = JSON.parse(await ok(harness, ['send', 'cli-agent', '--data', 'bad', '-o', 'json'])) as { id: string; seq: number };
    await waitUntil(async () => (await deadLetters(harness as Harness)) === 1, 'a dead letter');
    const dead = JSON.parse(await ok(harness, ['messages', 'ls', 'cli-agent', '--dead', '-o', 'json'])) as Record<string, unknown>[];
    expect(dead).toEqual([expect.objectContaining({ seq: bad.seq, id: bad.id, state: 'dead', attempts: 1, lastError: expect.stringContaining('refusing bad') })]);
    mail.accept('cli-agent', 'bad');
    expect(JSON.parse(await ok(harness, ['messages', 'requeue', 'cli-agent', String(bad.seq), '-o', 'json']))).toEqual({ agentId: 'cli-agent', seq: bad.seq, newSeq: bad.seq + 1 });
    await waitUntil(() => mail.taken('cli-agent').length >= 1, 'the requeued message taken');
    expect(mail.of('cli-agent').at(-1)).toMatchObject({ payload: 'bad', id: bad.id, seq: bad.seq + 1 });

    mail.refuse('cli-agent', 'worse');
    const worse = JSON.parse(await ok(harness, ['send', 'cli-agent', '--data', 'worse', '-o', 'json'])) as { seq: number };
    await waitUntil(async () => (await deadLetters(harness as Harness)) === 1, 'a second dead letter');
    expect(JSON.parse(await ok(harness, ['messages', 'purge', 'cli-agent', String(worse.seq), '-o', 'json']))).toEqual({ agentId: 'cli-agent', seq: worse.seq, purged: true });
    expect(JSON.parse(await ok(harness, ['messages', 'ls', 'cli-agent', '--dead', '-o', 'json']))).toEqual([]);

    // Failures are one line on stderr, with the exit status of what went wrong: 3 not found, 2 usage.
    const [unknown, purgedAgain, both] = await Promise.all([
      cli(harness, ['send', 'nobody', '--data', 'x']),
      cli(harness, ['messages', 'purge', 'cli-agent', String(worse.seq)]),
      cli(harness, ['send', 'cli-agent', '--data', 'x', '--file', file]),
    ]);
    expect(unknown.status).toBe(3);
    expect(unknown.stderr).toMatch(/^error: not found: no agent nobody\n$/);
    expect(purgedAgain.status).toBe(3);
    expect(purgedAgain.stderr).toMatch(/^error: not found: /);
    expect(both.status).toBe(2);
    expect(both.stderr).toContain('at most one of --data and --file');
  });
});
