/**
 * `control-plane hosts drain` and `hosts uncordon`, run for real (`node
 * bin/control-plane.js ...`) against a control plane and hosts in this process.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { runControlPlaneCli, type CliRun } from '../../support/control-plane-cli.js';
import { call, Harness } from '../../support/harness.js';
import { assertNoSecrets } from '../../support/secrets.js';
import { waitUntil } from '../../support/wait.js';

async function cli(harness: Harness, args: string[]): Promise<CliRun> {
  const run = await runControlPlaneCli(args, { PATH: process.env.PATH ?? '', TETHER_SERVER: harness.target, TETHER_ADMIN_TOKEN: harness.adminToken });
  assertNoSecrets(run.stdout + run.stderr, [harness.adminToken], `the output of control-plane ${args.join(' ')}`);
  return run;
}

describe('control-plane hosts drain / uncordon', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('prints each agent blocked (exit 5: unfinished) or moved (exit 0), shows the drain in hosts ls, and uncordons', async () => {
    harness = await Harness.start();
    const h = harness;
    const a = await h.startHost('a');
    for (const agentId of ['e1', 'e2']) {
      await call(h.admin.ensureAgent.bind(h.admin), { agentId, name: '', hostId: '', hostLabels: [], spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' }, update: false });
    }
    await h.dispatch(a.host, a.hostId, 'd1');
    await waitUntil(() => a.host.agentIds().length === 3, 'the agents on a');

    const blocked = await cli(h, ['hosts', 'drain', a.hostId]);
    expect(blocked.status, blocked.stderr).toBe(5);
    expect(blocked.stdout.trim().split('\n').sort()).toEqual([
      expect.stringMatching(/^d1: stays: made by dispatch with restart policy never/),
      'e1: blocked: no host is connected',
      'e2: blocked: no host is connected',
    ]);
    expect(blocked.stderr).toContain(`host ${a.hostId}: draining; 0 moved, 2 blocked, 1 staying`);
    const listed = await cli(h, ['hosts', 'ls']);
    expect(listed.stdout.split('\n')[0]).toMatch(/^HOST\s+STATE\s+CONNECTED\s+SCHEDULABLE\s+DRAIN\s+AGENTS/);
    expect(listed.stdout).toMatch(new RegExp(`^${a.hostId}\\s+active\\s+true\\s+false\\s+draining\\s`, 'm'));

    // A host that fits connects: the blocked agents move; drain again reports them (and exits 0: drained).
    const b = await h.startHost('b');
    await waitUntil(() => b.host.agentIds().length === 2, 'e1 and e2 moved to b');
    const moved = await cli(h, ['hosts', 'drain', a.hostId]);
    expect(moved.status, moved.stderr).toBe(0);
    expect(moved.stdout).toContain(`e1: moved to ${b.hostId}`);
    expect(moved.stdout).toContain(`e2: moved to ${b.hostId}`);
    expect(moved.stderr).toContain(`host ${a.hostId}: drained; 2 moved, 0 blocked, 1 staying`);

    const uncordoned = await cli(h, ['hosts', 'uncordon', a.hostId, '-o', 'json']);
    expect(uncordoned.status, uncordoned.stderr).toBe(0);
    expect(JSON.parse(uncordoned.stdout)).toEqual({ hostId: a.hostId, schedulable: true, previousDrainState: 'drained' });
    expect((await cli(h, ['hosts', 'ls'])).stdout).toMatch(new RegExp(`^${a.hostId}\\s+active\\s+true\\s+true\\s+-\\s`, 'm'));

    const unknown = await cli(h, ['hosts', 'drain', 'nobody-00000000']);
    expect(unknown.status).toBe(3);
    expect(unknown.stderr.trim().split('\n')).toHaveLength(1);
  });
});
