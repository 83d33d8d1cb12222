/**
 * The `control-plane` binary's agent lifecycle commands, run for real (`node
 * bin/control-plane.js ...`) against a control plane and host in this process:
 * `agents ensure` refusing a different spec (exit 4, the fields named) and
 * replacing it with `--update`; `agents describe` as text and JSON.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { runControlPlaneCli, type CliRun } from '../../support/control-plane-cli.js';
import { Harness, idleModule } from '../../support/harness.js';
import { waitUntil } from '../../support/wait.js';

function cli(harness: Harness, args: string[]): Promise<CliRun> {
  return runControlPlaneCli(args, { ...process.env, TETHER_SERVER: harness.target, TETHER_ADMIN_TOKEN: harness.adminToken, TETHER_ADMIN_TOKEN_FILE: '' });
}

async function ok(harness: Harness, args: string[]): Promise<string> {
  const run = await cli(harness, args);
  expect(run.status, `control-plane ${args.join(' ')}\n${run.stderr}`).toBe(0);
  return run.stdout;
}

describe('control-plane agents ensure / describe', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('refuses a different spec naming the fields, replaces it with --update, and describes what happened', async () => {
    const h = await Harness.start();
    harness = h;
    await h.startHost('cli', { modules: new Map([['idle', idleModule], ['other', idleModule]]) });
    const running = (incarnation: number) => async () => {
      const agent = await h.store.getAgent('cli-agent');
      return agent?.state === 'running' && agent.incarnation === incarnation;
    };

    expect(JSON.parse(await ok(h, ['agents', 'ensure', 'cli-agent', '--module', 'idle', '-o', 'json']))).toMatchObject({ created: true, updated: false });
    await waitUntil(running(1), 'cli-agent running');

    const refused = await cli(h, ['agents', 'ensure', 'cli-agent', '--module', 'other']);
    expect(refused.status).toBe(4);
    expect(refused.stderr).toContain('error: refused: agent cli-agent exists with a different spec (differs in spec.module); ensure it with --update');
    expect((await h.store.getAgent('cli-agent'))?.spec.module).toBe('idle');

    const updated = JSON.parse(await ok(h, ['agents', 'ensure', 'cli-agent', '--module', 'other', '--update', '-o', 'json'])) as { created: boolean; updated: boolean };
    expect(updated).toMatchObject({ created: true, updated: true });
    await waitUntil(running(2), 'cli-agent running again');

    const described = JSON.parse(await ok(h, ['agents', 'describe', 'cli-agent', '-o', 'json'])) as {
      agent: Record<string, unknown>;
      transitions: { fromState: string | null; toState: string; reason: string; incarnation: number }[];
    };
    expect(described.agent).toMatchObject({ agentId: 'cli-agent', state: 'running', incarnation: 2, restarts: 1 });
    expect(described.transitions.map((t) => `${t.fromState ?? '-'}>${t.toState}: ${t.reason}`)).toEqual([
      '->pending: created by ensure',
      'pending>starting: placed on the least loaded host (load 0)',
      'starting>running: its host reported it started',
      'running>pending: spec updated by ensure (spec.module)',
      'pending>starting: placed on the least loaded host (load 0)',
      'starting>running: its host reported it started',
    ]);

    const text = (await ok(h, ['agents', 'describe', 'cli-agent'])).split('\n');
    expect(text).toEqual(expect.arrayContaining([expect.stringMatching(/^STATE\s+running$/), expect.stringMatching(/^RESTARTS\s+1$/), expect.stringMatching(/^SPEC\s+module other$/)]));
    expect(text).toEqual(expect.arrayContaining([expect.stringMatching(/^TIME\s+FROM\s+TO\s+HOST\s+INCARNATION\s+REASON$/)]));
    expect(text.filter((line) => /\s+running\s+pending\s+\S+\s+1\s+spec updated by ensure \(spec\.module\)$/.test(line))).toHaveLength(1);
  });
});
