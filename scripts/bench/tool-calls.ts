/**
 * `npm run bench:tool-calls`: authenticated calls per second through the tool
 * library (`AgentClient.whoAmI`, the client an agent's tools get), 64 in
 * flight, while the agent's token is rotated every 100 ms (the client reads it
 * from the agent's holder at each call); against a raw grpc-js unary echo with
 * no authentication, 64 in flight too, in the same run.
 *
 * Tether: a control plane (SQLite on the real filesystem) and one agent host
 * running one module agent, in this process over loopback; the calls go
 * through the AgentClient the host hands the agent. Every call must succeed
 * (a refused call is counted and reported: a rotation must never cost one).
 * The JSON line's `ratio` is Tether's calls per second over raw (the issue's
 * goal: at least 0.9).
 *
 * Flags: --quick, --rounds N, --calls N (per run), --in-flight N.
 * BENCH_DIR: where stores go (refused on tmpfs).
 */
import type { AgentClient } from '../../agent-host/tools/agent-client.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { parseBenchArgs, resultLine, round } from './bench-cli.js';
import { benchDir, describeSummary, eachLimited, figure, interleave, printTable, startTiming, unary, within } from './bench-support.js';
import { RawGrpc } from './raw-grpc.js';
import { TetherFixture } from './tether-fixture.js';

const args = parseBenchArgs(process.argv.slice(2), { calls: [30_000, 6_000], 'in-flight': [64, 64] });
const CALLS = args.counts.calls as number;
const IN_FLIGHT = args.counts['in-flight'] as number;
const ROTATE_EVERY_MS = 100;

interface Run extends Record<string, number> {
  perSecond: number;
  cpuUsPerCall: number;
  failures: number;
  rotations: number;
}

/** Makes `CALLS` calls of `call`, `IN_FLIGHT` at a time; counts the ones that fail. */
async function calls(call: () => Promise<unknown>): Promise<{ wallMs: number; cpuMs: number; failures: number }> {
  let failures = 0;
  const stop = startTiming();
  await within(
    eachLimited(Array.from({ length: CALLS }), IN_FLIGHT, async () => {
      try {
        await call();
      } catch {
        failures++;
      }
    }),
    `${CALLS} calls`,
  );
  const timing = stop();
  return { wallMs: timing.wallMs, cpuMs: timing.cpuMs, failures };
}

async function tetherRun(root: string, fixture: TetherFixture | undefined): Promise<Run> {
  const own = fixture ?? (await TetherFixture.start(root));
  let host: Awaited<ReturnType<TetherFixture['startHost']>>['host'] | undefined;
  try {
    let client: AgentClient | undefined;
    const grab: AgentModule = (context) => {
      client = context.agent;
      return {};
    };
    const started = await own.startHost('bench-host', new Map([['grab', grab]]));
    host = started.host;
    const running = new Promise<void>((resolve) => host?.events.once('agent-started', () => resolve()));
    await own.dispatch([{ agentId: 'bench-agent', hostId: started.hostId, module: 'grab' }]);
    await within(running, 'the agent started');
    const agent = client as AgentClient;
    await agent.whoAmI(); // warm: channel connected, verifier cache primed
    let rotations = 0;
    let isDone = false;
    const rotating = (async (): Promise<void> => {
      while (!isDone) {
        await new Promise((resolve) => setTimeout(resolve, ROTATE_EVERY_MS));
        if (isDone) break;
        await unary(own.admin.rotateAgentCredential.bind(own.admin), { agentId: 'bench-agent' });
        rotations++;
      }
    })();
    let result: Awaited<ReturnType<typeof calls>>;
    try {
      result = await calls(() => agent.whoAmI());
    } finally {
      isDone = true;
      await rotating;
    }
    return { perSecond: CALLS / (result.wallMs / 1000), cpuUsPerCall: (result.cpuMs * 1000) / CALLS, failures: result.failures, rotations };
  } finally {
    await host?.close();
    if (fixture === undefined) await own.close();
  }
}

async function rawRun(): Promise<Run> {
  const raw = await RawGrpc.start();
  try {
    const payload = Buffer.alloc(16);
    await raw.echo(payload);
    const result = await calls(() => raw.echo(payload));
    return { perSecond: CALLS / (result.wallMs / 1000), cpuUsPerCall: (result.cpuMs * 1000) / CALLS, failures: result.failures, rotations: 0 };
  } finally {
    await raw.close();
  }
}

async function main(): Promise<void> {
  const root = benchDir();
  console.log(
    `tool-calls${args.isQuick ? ' (quick)' : ''}: ${CALLS} calls per run, ${IN_FLIGHT} in flight, ${args.rounds} interleaved rounds; ` +
      `AgentClient.whoAmI with the token rotated every ${ROTATE_EVERY_MS} ms vs raw unary echo (no auth); control plane and host in this process, loopback`,
  );
  const runs = await interleave(args.rounds, { tether: () => tetherRun(root, undefined), raw: () => rawRun() }, (_, run) =>
    `${run.perSecond.toFixed(0)} calls/s, CPU ${run.cpuUsPerCall.toFixed(1)} µs/call, ${run.failures} failed, ${run.rotations} rotations`,
  );
  const tether = figure(runs.tether, 'perSecond');
  const raw = figure(runs.raw, 'perSecond');
  const ratio = tether.median / raw.median;
  const failures = runs.tether.reduce((sum, run) => sum + run.failures, 0);
  printTable([
    ['', 'calls/s (range, spread)', 'CPU µs/call', 'failed calls', 'rotations/run'],
    ['tether AgentClient.whoAmI (auth, rotating token)', describeSummary(tether), figure(runs.tether, 'cpuUsPerCall').median.toFixed(1), String(failures), figure(runs.tether, 'rotations').median.toFixed(0)],
    ['raw grpc-js unary echo', describeSummary(raw), figure(runs.raw, 'cpuUsPerCall').median.toFixed(1), String(runs.raw.reduce((sum, run) => sum + run.failures, 0)), ''],
    ['ratio tether / raw', ratio.toFixed(3), '', '', ''],
  ]);
  console.log(
    resultLine('tool-calls', ratio, {
      quick: args.isQuick,
      rounds: args.rounds,
      calls: CALLS,
      inFlight: IN_FLIGHT,
      tetherPerSecond: round(tether.median, 0),
      tetherSpreadPct: round(tether.spreadPct, 1),
      rawPerSecond: round(raw.median, 0),
      rawSpreadPct: round(raw.spreadPct, 1),
      failedCalls: failures,
      rotationsPerRun: figure(runs.tether, 'rotations').median,
    }),
  );
  if (failures > 0) process.exitCode = 1;
}

await main();
