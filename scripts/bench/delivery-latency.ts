/**
 * `npm run bench:delivery-latency`: at a steady rate (1,000 messages a second
 * by default, open loop: each send is issued when due, whether or not earlier
 * ones were answered), the time from the operator's send call to the agent's
 * handler taking the message, durable commit included (SendMessages answers
 * once the message is committed with `synchronous = FULL`; delivery follows
 * the commit). Against the raw round trip of a grpc-js unary echo at the same
 * rate, in the same run.
 *
 * Tether: a control plane (SQLite on the real filesystem) and one agent host
 * with 10 module agents, in this process over loopback; one message per
 * SendMessages call, to the agents in turn. Each message carries the moment
 * of its call; the handler subtracts it. The first half second of each run is
 * a warm-up and not counted. The JSON line's `ratio` is Tether's p99 over the
 * raw p99 (the goal: at most 3). The rate each achieved is printed
 * too: below the target rate the side was saturated, and its latencies are
 * queueing, not the path's.
 *
 * Flags: --quick, --rounds N, --rate N (messages per second), --seconds N
 * (per run). BENCH_DIR: where stores go (refused on tmpfs).
 */
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { parseBenchArgs, quantile, resultLine, round } from './bench-cli.js';
import { benchDir, BOUND_MS, describeSummary, figure, interleave, printTable, unary, until, within } from './bench-support.js';
import { RawGrpc } from './raw-grpc.js';
import { TetherFixture } from './tether-fixture.js';

const args = parseBenchArgs(process.argv.slice(2), { rate: [1_000, 1_000], seconds: [10, 3], agents: [10, 10] });
const RATE = args.counts.rate as number;
const SECONDS = args.counts.seconds as number;
const AGENTS = args.counts.agents as number;
const WARMUP_MS = 500;

interface Run extends Record<string, number> {
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  count: number;
  /** Messages handled per second, first call to last handled: below the rate, the system was saturated and the latencies are queueing. */
  achievedPerSecond: number;
}

/**
 * Calls `send(i, calledAtMs)` for i = 0, 1, … at `RATE` per second for `SECONDS`
 * (open loop, catching up after a late timer), then waits for every send to settle.
 */
async function steady(send: (index: number, calledAtMs: number) => Promise<void>): Promise<number> {
  const total = RATE * SECONDS + Math.round((RATE * WARMUP_MS) / 1000);
  const startedMs = performance.now();
  const pending: Promise<void>[] = [];
  let issued = 0;
  while (issued < total) {
    const dueCount = Math.min(total, Math.floor(((performance.now() - startedMs) * RATE) / 1000) + 1);
    for (; issued < dueCount; issued++) pending.push(send(issued, performance.now()));
    await new Promise((resolve) => setTimeout(resolve, 1));
    if (performance.now() - startedMs > BOUND_MS) throw new Error('bench: the sends took longer than the bound');
  }
  await within(Promise.all(pending), 'every send answered');
  return total;
}

function summarizeLatencies(samples: { atMs: number; latencyMs: number }[], startedMs: number): Run {
  const counted = samples.filter((s) => s.atMs - startedMs >= WARMUP_MS).map((s) => s.latencyMs);
  const lastHandledMs = Math.max(...samples.map((s) => s.atMs + s.latencyMs));
  return {
    p50Ms: quantile(counted, 0.5),
    p99Ms: quantile(counted, 0.99),
    maxMs: quantile(counted, 1),
    count: counted.length,
    achievedPerSecond: samples.length / ((lastHandledMs - startedMs) / 1000),
  };
}

async function tetherRun(root: string): Promise<Run> {
  const fixture = await TetherFixture.start(root);
  let host: Awaited<ReturnType<TetherFixture['startHost']>>['host'] | undefined;
  try {
    const samples: { atMs: number; latencyMs: number }[] = [];
    const clocked: AgentModule = () => ({
      onMessage: (message) => {
        const calledAtMs = Buffer.from(message.payload).readDoubleBE(0);
        samples.push({ atMs: calledAtMs, latencyMs: performance.now() - calledAtMs });
        return Promise.resolve();
      },
    });
    const started = await fixture.startHost('bench-host', new Map([['clocked', clocked]]));
    host = started.host;
    const agentIds = Array.from({ length: AGENTS }, (_, i) => `bench-agent-${i}`);
    let running = 0;
    const allRunning = new Promise<void>((resolve) => host?.events.on('agent-started', () => void (++running === AGENTS && resolve())));
    await fixture.dispatch(agentIds.map((agentId) => ({ agentId, hostId: started.hostId, module: 'clocked' })));
    await within(allRunning, `${AGENTS} agents started`);
    const startedMs = performance.now();
    const total = await steady(async (index, calledAtMs) => {
      const payload = Buffer.alloc(100);
      payload.writeDoubleBE(calledAtMs, 0);
      const agentId = agentIds[index % AGENTS] as string;
      await unary(fixture.admin.sendMessages.bind(fixture.admin), { agentId, messages: [{ contentType: 'application/octet-stream', payload, idempotencyKey: `m-${index}` }] });
    });
    await until(() => samples.length >= total, `all ${total} messages taken`, 5);
    return summarizeLatencies(samples, startedMs);
  } finally {
    await host?.close();
    await fixture.close();
  }
}

async function rawRun(): Promise<Run> {
  const raw = await RawGrpc.start();
  try {
    const samples: { atMs: number; latencyMs: number }[] = [];
    const payload = Buffer.alloc(100);
    const startedMs = performance.now();
    await steady(async (_index, calledAtMs) => {
      await raw.echo(payload);
      samples.push({ atMs: calledAtMs, latencyMs: performance.now() - calledAtMs });
    });
    return summarizeLatencies(samples, startedMs);
  } finally {
    await raw.close();
  }
}

async function main(): Promise<void> {
  const root = benchDir();
  console.log(
    `delivery-latency${args.isQuick ? ' (quick)' : ''}: ${RATE} msg/s for ${SECONDS} s (+${WARMUP_MS} ms warm-up) per run, ${args.rounds} interleaved rounds; ` +
      `100-byte payloads, one per call, to ${AGENTS} agents on one host; control plane (synchronous = FULL) in this process, loopback`,
  );
  const runs = await interleave(args.rounds, { tether: () => tetherRun(root), raw: () => rawRun() }, (_, run) =>
    `p50 ${run.p50Ms.toFixed(2)} ms, p99 ${run.p99Ms.toFixed(2)} ms, max ${run.maxMs.toFixed(1)} ms over ${run.count}; ${run.achievedPerSecond.toFixed(0)} msg/s achieved`,
  );
  const rows: string[][] = [['', 'p50 ms (range, spread)', 'p99 ms (range, spread)', 'max ms', 'achieved msg/s']];
  for (const name of ['tether', 'raw'] as const) {
    rows.push([name === 'tether' ? 'tether: send call → agent handler' : 'raw grpc-js unary round trip', describeSummary(figure(runs[name], 'p50Ms'), 2), describeSummary(figure(runs[name], 'p99Ms'), 2), figure(runs[name], 'maxMs').median.toFixed(1), figure(runs[name], 'achievedPerSecond').median.toFixed(0)]);
  }
  const ratioP99 = figure(runs.tether, 'p99Ms').median / figure(runs.raw, 'p99Ms').median;
  const ratioP50 = figure(runs.tether, 'p50Ms').median / figure(runs.raw, 'p50Ms').median;
  rows.push(['ratio tether / raw', ratioP50.toFixed(2), ratioP99.toFixed(2), '', '']);
  printTable(rows);
  console.log(
    resultLine('delivery-latency', ratioP99, {
      quick: args.isQuick,
      rounds: args.rounds,
      ratioMeaning: 'tether p99 / raw p99 (lower is better)',
      ratePerSecond: RATE,
      seconds: SECONDS,
      agents: AGENTS,
      tetherP50Ms: round(figure(runs.tether, 'p50Ms').median, 2),
      tetherP99Ms: round(figure(runs.tether, 'p99Ms').median, 2),
      tetherP99SpreadPct: round(figure(runs.tether, 'p99Ms').spreadPct, 1),
      rawP50Ms: round(figure(runs.raw, 'p50Ms').median, 2),
      rawP99Ms: round(figure(runs.raw, 'p99Ms').median, 2),
      rawP99SpreadPct: round(figure(runs.raw, 'p99Ms').spreadPct, 1),
      ratioP50: round(ratioP50),
      tetherAchievedPerSecond: round(figure(runs.tether, 'achievedPerSecond').median, 0),
      rawAchievedPerSecond: round(figure(runs.raw, 'achievedPerSecond').median, 0),
    }),
  );
}

await main();
