/**
 * `npm run bench:memory` (node --expose-gc): heap after a full collection
 * - per idle agent on an agent host carrying `--agents` of them (10,000),
 *   measured in this process, which runs only the host; the control plane is
 *   a child process (`control-plane serve`, as operators run it);
 * - per connected host on the control plane with `--hosts` of them (1,000
 *   simulated hosts, each its own connection), measured in that child
 *   (scripts/support/memory-probe.mjs);
 * - and, after the agents are stopped and the hosts gone, how far each heap
 *   is from where it started (the goal: back within 5 %).
 * Baselines, interleaved: a raw grpc-js server (a child too) holding one open
 * bidi stream per client connection, `--hosts` of them (heap per connection),
 * and a hand-rolled refresher's per-agent state in this process (a token
 * string of the same size and one timer per agent).
 *
 * The JSON line's `ratio` is the control plane's heap per connected host over
 * the raw server's per open connection (lower is better); the goals
 * are absolute: < 6 KB per idle agent, < 12 KB per connected host.
 *
 * Flags: --quick, --rounds N, --agents N, --hosts N. BENCH_DIR: where the
 * control plane's data directory goes.
 */
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import { idleModule } from '../../agent-host/modules/builtin-modules.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { SystemClock } from '../../common/clock.js';
import { createLogger } from '../../common/logger.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { ControlPlaneProcess } from '../support/control-plane-process.js';
import { parseBenchArgs, resultLine, round, summarize } from './bench-cli.js';
import { benchDir, BOUND_MS, describeSummary, eachLimited, heapAfterGc, printTable, unary, until, within } from './bench-support.js';
import { SimHost } from './sim-host.js';

const args = parseBenchArgs(process.argv.slice(2), { agents: [10_000, 2_000], hosts: [1_000, 200] });
const AGENTS = args.counts.agents as number;
const HOSTS = args.counts.hosts as number;

interface MemoryReply {
  type: 'memory';
  heapUsedBytes: number;
}
const isMemoryReply = (reply: unknown): reply is MemoryReply => typeof reply === 'object' && reply !== null && (reply as { type?: unknown }).type === 'memory';

/** Per-item bytes and how far the heap stayed from its start after the items left (% of the start). */
interface Measure extends Record<string, number> {
  bytesPerItem: number;
  leftoverPct: number;
}

async function main(): Promise<void> {
  heapAfterGc(); // fails at once without --expose-gc
  const root = benchDir();
  const dataDir = mkdtempSync(join(root, 'tether-bench-memory-'));
  const adminToken = randomBytes(24).toString('base64url');
  const cp = await ControlPlaneProcess.start({
    dataDir,
    adminToken,
    logLevel: 'info', // its "serving" line is info; the lines are dropped
    nodeArgs: ['--expose-gc', '--import', './scripts/support/memory-probe.mjs'],
    hasIpc: true,
    onLine: () => undefined,
    boundMs: BOUND_MS,
  });
  const target = `127.0.0.1:${cp.port}`;
  const admin = new AdminServiceClient(target, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor({ get: () => adminToken })] });
  const raw = fork(join(import.meta.dirname, '..', 'support', 'raw-stream-server.mjs'), [], { execArgv: ['--expose-gc'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const rawRequest = <T>(message: object, match: (reply: unknown) => reply is T): Promise<T> =>
    within(
      new Promise<T>((resolve) => {
        const onMessage = (reply: unknown): void => {
          if (!match(reply)) return;
          raw.off('message', onMessage);
          resolve(reply);
        };
        raw.on('message', onMessage);
        if (Object.keys(message).length > 0) raw.send(message);
      }),
      'the raw server to answer',
    );
  const rawPort = (await rawRequest({}, (reply): reply is { type: 'port'; port: number } => typeof reply === 'object' && reply !== null && (reply as { type?: unknown }).type === 'port')).port;
  const cpHeap = async (): Promise<number> => (await cp.request({ type: 'memory', id: Math.random() }, isMemoryReply)).heapUsedBytes;
  const rawHeap = async (): Promise<number> => (await rawRequest({ type: 'memory' }, isMemoryReply)).heapUsedBytes;

  const clock = new SystemClock();
  // Errors only: agents stopped mid-heartbeat log a refused heartbeat each (warn), 10,000 lines of noise.
  const logger = createLogger({ level: 'error' });
  let agentRound = 0;
  let hostRound = 0;

  /** Idle agents on one real host in this process. */
  const agentsOnHost = async (): Promise<Measure> => {
    agentRound++;
    const enrolled = await unary(admin.enrollHost.bind(admin), { name: `memory-host-${agentRound}`, joinTtlMs: 0 });
    const host = AgentHost.start({ target, clock, logger, credentialStore: new MemoryHostCredentialStore(), joinToken: enrolled.joinToken, modules: new Map([['idle', idleModule]]), capacity: 0 });
    try {
      await until(() => host.state === 'connected', 'the host connected');
      const before = heapAfterGc();
      const agentIds = Array.from({ length: AGENTS }, (_, i) => `mem-${agentRound}-${i}`);
      await eachLimited(agentIds, 100, async (agentId) => {
        await unary(admin.dispatchAgent.bind(admin), { agentId, name: agentId, hostId: enrolled.hostId, hostLabels: [], spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' } });
      });
      await until(() => host.agentIds().length === AGENTS, `${AGENTS} agents running`, 50);
      const loaded = heapAfterGc();
      await eachLimited(agentIds, 100, async (agentId) => {
        await unary(admin.stopAgent.bind(admin), { agentId, reason: 'bench' });
      });
      await until(() => host.agentIds().length === 0, 'every agent stopped', 50);
      const after = heapAfterGc();
      return { bytesPerItem: (loaded - before) / AGENTS, leftoverPct: ((after - before) / before) * 100 };
    } finally {
      await host.close();
    }
  };

  /** Simulated hosts connected to the control plane (a child), its heap measured there. */
  const hostsOnControlPlane = async (): Promise<Measure> => {
    hostRound++;
    const enrolled = await Promise.all(Array.from({ length: HOSTS }, (_, i) => unary(admin.enrollHost.bind(admin), { name: `memory-sim-${hostRound}-${i}`, joinTtlMs: 0 })));
    const before = await cpHeap();
    const hosts: SimHost[] = [];
    const hooks = { onStart: () => undefined, onRotated: () => undefined };
    try {
      await eachLimited(enrolled, 16, async ({ joinToken }) => {
        const host = SimHost.connect(target, joinToken, clock, hooks);
        hosts.push(host);
        await host.welcomed;
      });
      const loaded = await cpHeap();
      for (const host of hosts.splice(0)) host.close();
      const after = await connectedGone();
      return { bytesPerItem: (loaded - before) / HOSTS, leftoverPct: ((after - before) / before) * 100 };
    } finally {
      for (const host of hosts) host.close();
    }
  };
  /** The control plane's heap once it lists no host connected. */
  const connectedGone = async (): Promise<number> => {
    await untilAsync(async () => {
      let pageToken = '';
      for (let page = 0; page < 1_000; page++) {
        const listed = await unary(admin.listHosts.bind(admin), { pageSize: 500, pageToken });
        if (listed.hosts.some((h) => h.connected)) return false;
        pageToken = listed.nextPageToken;
        if (pageToken === '') return true;
      }
      return false;
    }, 'no host connected');
    return cpHeap();
  };

  /** Raw grpc-js connections, one stream each, to the raw server (a child). */
  const rawConnections = async (): Promise<Measure> => {
    const before = await rawHeap();
    const clients: grpc.Client[] = [];
    const calls: grpc.ClientDuplexStream<Buffer, Buffer>[] = [];
    const identity = (value: Buffer): Buffer => value;
    try {
      await eachLimited(Array.from({ length: HOSTS }), 16, async () => {
        const client = new grpc.Client(`127.0.0.1:${rawPort}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
        clients.push(client);
        const call = client.makeBidiStreamRequest<Buffer, Buffer>('/bench.Raw/Hold', identity, identity);
        call.on('error', () => undefined);
        calls.push(call);
        await within(new Promise<void>((resolve) => call.once('data', () => resolve())), 'a raw stream open');
      });
      const loaded = await rawHeap();
      // Closing a channel leaves its calls running: end them first, as a host leaving would.
      for (const call of calls.splice(0)) call.cancel();
      for (const client of clients.splice(0)) client.close();
      await untilAsync(async () => (await rawRequest({ type: 'memory' }, (r): r is { type: 'memory'; streams: number } => isMemoryReply(r))).streams === 0, 'raw streams closed');
      const after = await rawHeap();
      return { bytesPerItem: (loaded - before) / HOSTS, leftoverPct: ((after - before) / before) * 100 };
    } finally {
      for (const call of calls) call.cancel();
      for (const client of clients) client.close();
    }
  };

  /** A hand-rolled refresher's per-agent state: a token of the same size and one pending refresh timer. */
  const rawAgents = (): Promise<Measure> => {
    const token = `${'x'.repeat(700)}`;
    const before = heapAfterGc();
    const agents = new Map<string, { token: string; timer: NodeJS.Timeout }>();
    for (let i = 0; i < AGENTS; i++) agents.set(`raw-${i}`, { token: token.slice(0, 699) + String(i % 10), timer: setTimeout(() => undefined, 3_600_000) });
    const loaded = heapAfterGc();
    for (const entry of agents.values()) clearTimeout(entry.timer);
    agents.clear();
    const after = heapAfterGc();
    return Promise.resolve({ bytesPerItem: (loaded - before) / AGENTS, leftoverPct: ((after - before) / before) * 100 });
  };

  try {
    console.log(`memory${args.isQuick ? ' (quick)' : ''}: ${AGENTS} idle agents on one host, ${HOSTS} hosts on the control plane (a child process), ${args.rounds} interleaved rounds; heap after GC`);
    const results: Record<'agents' | 'hosts' | 'rawConnections' | 'rawAgents', Measure[]> = { agents: [], hosts: [], rawConnections: [], rawAgents: [] };
    const tasks = { agents: agentsOnHost, hosts: hostsOnControlPlane, rawConnections, rawAgents } as const;
    for (let r = 1; r <= args.rounds; r++) {
      const names = Object.keys(tasks) as (keyof typeof tasks)[];
      const shift = (r - 1) % names.length;
      for (const name of [...names.slice(shift), ...names.slice(0, shift)]) {
        const m = await tasks[name]();
        results[name].push(m);
        console.log(`  round ${r}, ${name}: ${(m.bytesPerItem / 1024).toFixed(2)} KiB each, heap ${m.leftoverPct >= 0 ? '+' : ''}${m.leftoverPct.toFixed(1)} % from the start after they left`);
      }
    }
    const kib = (ms: Measure[]): ReturnType<typeof summarize> => summarize(ms.map((m) => m.bytesPerItem / 1024));
    const left = (ms: Measure[]): number => summarize(ms.map((m) => m.leftoverPct)).median;
    printTable([
      ['', 'KiB each (range, spread)', 'heap after they left'],
      [`tether: per idle agent on a host (${AGENTS})`, describeSummary(kib(results.agents), 2), `${left(results.agents).toFixed(1)} %`],
      [`raw: per agent, token + timer (${AGENTS})`, describeSummary(kib(results.rawAgents), 2), `${left(results.rawAgents).toFixed(1)} %`],
      [`tether: per connected host on the control plane (${HOSTS})`, describeSummary(kib(results.hosts), 2), `${left(results.hosts).toFixed(1)} %`],
      [`raw: per grpc-js connection with one open stream (${HOSTS})`, describeSummary(kib(results.rawConnections), 2), `${left(results.rawConnections).toFixed(1)} %`],
    ]);
    const ratio = kib(results.hosts).median / kib(results.rawConnections).median;
    console.log(
      resultLine('memory', ratio, {
        quick: args.isQuick,
        rounds: args.rounds,
        ratioMeaning: 'control-plane heap per connected host / raw server heap per open connection (lower is better)',
        agents: AGENTS,
        hosts: HOSTS,
        perAgentKiB: round(kib(results.agents).median, 2),
        perAgentSpreadPct: round(kib(results.agents).spreadPct, 1),
        agentsLeftoverPct: round(left(results.agents), 1),
        rawPerAgentKiB: round(kib(results.rawAgents).median, 2),
        perHostKiB: round(kib(results.hosts).median, 2),
        perHostSpreadPct: round(kib(results.hosts).spreadPct, 1),
        hostsLeftoverPct: round(left(results.hosts), 1),
        rawPerConnectionKiB: round(kib(results.rawConnections).median, 2),
        rawConnectionsLeftoverPct: round(left(results.rawConnections), 1),
        ratioPerAgentToRaw: round(kib(results.agents).median / kib(results.rawAgents).median),
      }),
    );
  } finally {
    admin.close();
    raw.kill();
    await cp.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** Resolves once `check()` resolves true, checking every 50 ms (bounded by BOUND_MS). */
async function untilAsync(check: () => Promise<boolean>, what: string): Promise<void> {
  const startedMs = performance.now();
  while (!(await check())) {
    if (performance.now() - startedMs > BOUND_MS) throw new Error(`bench: no ${what} within ${BOUND_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

await main();
