/**
 * The CLI's lists follow every page: with more hosts, agents and messages than
 * the largest page the control plane serves (MAX_PAGE_SIZE), `hosts ls`,
 * `agents ls` and `messages ls` (run for real, `-o jsonl`) print them all, and
 * `hosts describe` finds a host past the first page.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_PAGE_SIZE } from '../../../control-plane/services/convert.js';
import { runControlPlaneCli, type CliRun } from '../../support/control-plane-cli.js';
import { call, Harness } from '../../support/harness.js';

const COUNT = MAX_PAGE_SIZE + 1;
const BATCH = 100;

/** Runs `make(i)` for i in [0, count), `BATCH` at a time. */
async function inBatches<T>(count: number, make: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let start = 0; start < count; start += BATCH) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(BATCH, count - start) }, (_, k) => make(start + k)))));
  }
  return out;
}

describe('the CLI follows pages', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it(`hosts ls, agents ls and messages ls print all ${COUNT} items; hosts describe finds the last host`, async () => {
    const h = await Harness.start();
    harness = h;
    const hostIds = await inBatches(COUNT, async (i) => (await call(h.admin.enrollHost.bind(h.admin), { name: `h${i}`, joinTtlMs: 0 })).hostId);
    // No host is connected: the agents wait, pending, and their messages wait in their outboxes.
    await inBatches(COUNT, (i) =>
      call(h.admin.ensureAgent.bind(h.admin), { agentId: `a${i}`, name: '', hostId: '', hostLabels: [], spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' }, update: false }),
    );
    await inBatches(Math.ceil(COUNT / BATCH), (b) =>
      call(h.admin.sendMessages.bind(h.admin), {
        agentId: 'a0',
        messages: Array.from({ length: Math.min(BATCH, COUNT - b * BATCH) }, (_, k) => ({ payload: Buffer.from(String(b * BATCH + k)), contentType: '', idempotencyKey: '' })),
      }),
    );

    const cli = (args: string[]): Promise<CliRun> => runControlPlaneCli(args, { PATH: process.env.PATH ?? '', TETHER_SERVER: h.target, TETHER_ADMIN_TOKEN: h.adminToken });
    const lastHost = hostIds.sort().at(-1) as string;
    const [hosts, agents, messages, described] = await Promise.all([
      cli(['hosts', 'ls', '-o', 'jsonl']),
      cli(['agents', 'ls', '-o', 'jsonl']),
      cli(['messages', 'ls', 'a0', '-o', 'jsonl']),
      cli(['hosts', 'describe', lastHost, '-o', 'json']),
    ]);
    for (const run of [hosts, agents, messages, described]) expect(run.status, run.stderr).toBe(0);
    const lines = (run: CliRun): Record<string, unknown>[] => run.stdout.trimEnd().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(new Set(lines(hosts).map((x) => x.hostId)).size).toBe(COUNT);
    expect(new Set(lines(agents).map((x) => x.agentId)).size).toBe(COUNT);
    expect(lines(messages).map((m) => m.seq)).toEqual(Array.from({ length: COUNT }, (_, i) => i + 1));
    expect((JSON.parse(described.stdout) as { host: { hostId: string; state: string } }).host).toMatchObject({ hostId: lastHost, state: 'enrolled' });
  });
});
