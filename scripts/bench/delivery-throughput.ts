/**
 * `npm run bench:delivery-throughput`: messages per second into agents, from
 * the operator's first send to the last message an agent's handler took,
 * against a raw grpc-js bidi stream pushing as many messages of the same size
 * (one encoded Deliver envelope each) with backpressure, in the same run.
 *
 * Tether: a control plane (SQLite on the real filesystem, `synchronous = FULL`,
 * group commit: the defaults) and one agent host with 1 or 100 module agents,
 * in this process over loopback, a fresh store each run. The operator sends
 * with AdminService.SendMessages in batches of `--batch` messages (one
 * sequential sender per agent, so each agent's order is the send order).
 *
 * Cases: 1 and 100 agents × 100 B and 4 KiB payloads. Interleaved rounds
 * (`--rounds`, at least 3). The JSON line's `ratio` is the 100 B, 100 agents
 * case (the goal: at least 0.6).
 *
 * Flags: --quick, --rounds N, --messages N (per case at 100 B; a quarter at
 * 4 KiB), --batch N (500; at 4 KiB, as many as fit in 256 KiB: 64), --store
 * sqlite,postgres://… (each store's Tether runs interleaved with the others'
 * and the raw ones, a fresh SQLite file or PostgreSQL schema per run; the
 * JSON line's figures are the first store's, the others' beside them).
 * BENCH_DIR: where stores go (refused on tmpfs).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { ControlMessage } from '../../gen/tether/v1/host.js';
import { parseBenchArgs, resultLine, round, storeLabel } from './bench-cli.js';
import { benchDir, describeSummary, figure, interleave, printTable, startTiming, unary, within } from './bench-support.js';
import { RawGrpc } from './raw-grpc.js';
import { TetherFixture } from './tether-fixture.js';

const args = parseBenchArgs(process.argv.slice(2), { messages: [20_000, 4_000], batch: [500, 500] });
const BATCH = args.counts.batch as number;

interface Case {
  key: string;
  agents: number;
  payloadBytes: number;
  messages: number;
  /** Messages per SendMessages call: `--batch`, fewer for large payloads (a call stays well under the 1 MiB receive limit). */
  batch: number;
}

/** Payload bytes one SendMessages call carries at most. */
const MAX_BATCH_BYTES = 256 * 1024;

interface Run extends Record<string, number> {
  perSecond: number;
  cpuUsPerMessage: number;
  loopP99Ms: number;
}

/** One Tether run: a fresh control plane and host, `agents` agents, every message sent and taken. */
async function tetherRun(root: string, c: Case, store: string): Promise<Run> {
  const fixture = await TetherFixture.start(root, {}, store);
  let host: Awaited<ReturnType<TetherFixture['startHost']>>['host'] | undefined;
  try {
    let taken = 0;
    let allTaken: () => void = () => undefined;
    const done = new Promise<void>((resolve) => (allTaken = resolve));
    const counter: AgentModule = () => ({
      onMessage: () => {
        if (++taken === c.messages) allTaken();
        return Promise.resolve();
      },
    });
    const started = await fixture.startHost('bench-host', new Map([['counter', counter]]));
    host = started.host;
    const agentIds = Array.from({ length: c.agents }, (_, i) => `bench-agent-${i}`);
    let running = 0;
    const allRunning = new Promise<void>((resolve) => host?.events.on('agent-started', () => void (++running === c.agents && resolve())));
    await fixture.dispatch(agentIds.map((agentId) => ({ agentId, hostId: started.hostId, module: 'counter' })));
    await within(allRunning, `${c.agents} agents started`);

    const payload = randomBytes(c.payloadBytes);
    const perAgent = Math.ceil(c.messages / c.agents);
    const stop = startTiming();
    await within(
      Promise.all(
        agentIds.map(async (agentId, index) => {
          const count = Math.max(0, Math.min(perAgent, c.messages - index * perAgent));
          for (let sent = 0; sent < count; sent += c.batch) {
            const size = Math.min(c.batch, count - sent);
            await unary(fixture.admin.sendMessages.bind(fixture.admin), {
              agentId,
              messages: Array.from({ length: size }, (_, i) => ({ contentType: 'application/octet-stream', payload, idempotencyKey: `${agentId}/${sent + i}` })),
            });
          }
        }),
      ),
      'sends answered',
    );
    await within(done, `all ${c.messages} messages taken`);
    const timing = stop();
    return { perSecond: c.messages / (timing.wallMs / 1000), cpuUsPerMessage: (timing.cpuMs * 1000) / c.messages, loopP99Ms: timing.loopP99Ms };
  } finally {
    await host?.close();
    await fixture.close();
  }
}

/** One raw run: as many messages of one envelope's size down one grpc-js bidi stream. */
async function rawRun(c: Case, envelopeBytes: number): Promise<Run> {
  const raw = await RawGrpc.start();
  const stream = raw.openPush();
  try {
    const stop = startTiming();
    await stream.push(c.messages, envelopeBytes);
    const timing = stop();
    return { perSecond: c.messages / (timing.wallMs / 1000), cpuUsPerMessage: (timing.cpuMs * 1000) / c.messages, loopP99Ms: timing.loopP99Ms };
  } finally {
    stream.close();
    await raw.close();
  }
}

/** The size of one Deliver envelope as the control plane writes it, so the raw messages weigh the same. */
function envelopeBytes(c: Case): number {
  return ControlMessage.encode({
    deliver: {
      agentId: `bench-agent-${c.agents - 1}`,
      seq: c.messages,
      attempt: 1,
      message: { id: randomUUID(), from: 'operator', contentType: 'application/octet-stream', payload: randomBytes(c.payloadBytes), createdAtMs: Date.now() },
    },
  }).finish().length;
}

async function main(): Promise<void> {
  const root = benchDir();
  const messages = args.counts.messages as number;
  const batch = (payloadBytes: number): number => Math.max(1, Math.min(BATCH, Math.floor(MAX_BATCH_BYTES / payloadBytes)));
  const large = Math.max(100, Math.floor(messages / 4));
  const cases: Case[] = [
    { key: '1 agent, 100 B', agents: 1, payloadBytes: 100, messages, batch: batch(100) },
    { key: '100 agents, 100 B', agents: 100, payloadBytes: 100, messages, batch: batch(100) },
    { key: '1 agent, 4 KiB', agents: 1, payloadBytes: 4096, messages: large, batch: batch(4096) },
    { key: '100 agents, 4 KiB', agents: 100, payloadBytes: 4096, messages: large, batch: batch(4096) },
  ];
  const stores = args.stores;
  console.log(
    `delivery-throughput${args.isQuick ? ' (quick)' : ''}: ${args.rounds} interleaved rounds per case; ` +
      `control plane (${stores.map((store) => (store === 'sqlite' ? 'SQLite, synchronous = FULL' : 'PostgreSQL, a fresh schema per run')).join(' against ')}) and one host in this process, loopback`,
  );
  const rows: string[][] = [['case', 'messages', 'batch', 'store', 'tether msg/s (range, spread)', 'raw msg/s (range, spread)', 'ratio', 'tether CPU µs/msg', 'raw CPU µs/msg']];
  const figures: Record<string, unknown> = {};
  let goalRatio = Number.NaN;
  const variantOf = (store: string): string => `tether on ${storeLabel(store)}`;
  for (const c of cases) {
    console.log(`${c.key}: ${c.messages} messages, sent in batches of ${c.batch}`);
    const bytes = envelopeBytes(c);
    const variants: Record<string, () => Promise<Run>> = { raw: () => rawRun(c, bytes) };
    for (const store of stores) variants[variantOf(store)] = () => tetherRun(root, c, store);
    const runs = await interleave(args.rounds, variants, (_, run) =>
      `${run.perSecond.toFixed(0)} msg/s, CPU ${run.cpuUsPerMessage.toFixed(1)} µs/msg, loop delay p99 ${run.loopP99Ms.toFixed(1)} ms`,
    );
    const raw = figure(runs.raw ?? [], 'perSecond');
    const byStore: Record<string, unknown> = {};
    for (const [index, store] of stores.entries()) {
      const tetherRuns = runs[variantOf(store)] ?? [];
      const tether = figure(tetherRuns, 'perSecond');
      const ratio = tether.median / raw.median;
      if (index === 0 && c.agents === 100 && c.payloadBytes === 100) goalRatio = ratio;
      rows.push([
        c.key,
        String(c.messages),
        String(c.batch),
        storeLabel(store),
        describeSummary(tether),
        describeSummary(raw),
        ratio.toFixed(3),
        figure(tetherRuns, 'cpuUsPerMessage').median.toFixed(1),
        figure(runs.raw ?? [], 'cpuUsPerMessage').median.toFixed(1),
      ]);
      byStore[storeLabel(store)] = { tetherPerSecond: round(tether.median, 0), tetherSpreadPct: round(tether.spreadPct, 1), ratio: round(ratio) };
    }
    const first = byStore[storeLabel(stores[0] ?? 'sqlite')] as Record<string, number>;
    figures[`${c.agents}x${c.payloadBytes}`] = {
      messages: c.messages,
      batch: c.batch,
      ...first,
      rawPerSecond: round(raw.median, 0),
      rawSpreadPct: round(raw.spreadPct, 1),
      ...(stores.length > 1 ? { stores: byStore } : {}),
    };
  }
  printTable(rows);
  console.log(
    resultLine('delivery-throughput', goalRatio, { quick: args.isQuick, rounds: args.rounds, store: storeLabel(stores[0] ?? 'sqlite'), synchronous: 'full', cases: figures }),
  );
}

await main();
