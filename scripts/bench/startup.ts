/**
 * `npm run bench:startup`: from spawning a binary to it being ready, as
 * operators run it (`node bin/…`: the compiled JavaScript in dist/, built
 * first if it is not up to date):
 * - `control-plane serve` (fresh data directory: keys generated, store
 *   created) until it logs "control plane serving";
 * - `agent-host` (fresh data directory, a join token) until it logs
 *   "connected to control plane" (a control plane in this process answers);
 * against, in the same run: the same two started the way they were before
 * dist/ (the TypeScript sources through tsx's loader registered at start,
 * `scripts/support/tsx-bin.mjs`), a raw grpc-js server started with
 * `node -e` (require grpc-js, bind 127.0.0.1:0, print) and an empty
 * `node -e ''`. Rounds interleave them; each figure is a median.
 *
 * The JSON line's `ratio` is the control plane's start over the raw grpc-js
 * server's (lower is better); `controlPlaneOverTsx` and `agentHostOverTsx`
 * are the compiled starts over the tsx ones. Flags: --quick (fewer starts per
 * round), --rounds N, --starts N (per binary per round).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { build } from '../build.js';
import { parseBenchArgs, resultLine, round, summarize } from './bench-cli.js';
import { benchDir, BOUND_MS, describeSummary, interleave, printTable } from './bench-support.js';
import { TetherFixture } from './tether-fixture.js';

const args = parseBenchArgs(process.argv.slice(2), { starts: [3, 1] });
const STARTS = args.counts.starts as number;
const ROOT = join(import.meta.dirname, '..', '..');

/** How each binary is started: compiled (`bin/<name>.js`, as shipped) or the way it was before dist/ (tsx). */
const LAUNCHERS = {
  compiled: (binary: string): string[] => [`bin/${binary}.js`],
  tsx: (binary: string): string[] => ['scripts/support/tsx-bin.mjs', binary],
};

const RAW_SERVER = `
const grpc = require('@grpc/grpc-js');
const server = new grpc.Server();
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => { if (err) throw err; console.log('ready ' + port); });
`;

/** Spawns `node …argv` and resolves with the ms until a stdout line satisfies `isReady`; then kills it and waits for its exit. */
async function timeToReady(argv: string[], env: Record<string, string>, isReady: (line: string) => boolean): Promise<number> {
  const startedMs = performance.now();
  const child = spawn(process.execPath, argv, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => void (stderr = (stderr + chunk).slice(-2_000)));
  try {
    return await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`bench: ${argv.join(' ').slice(0, 60)} not ready within ${BOUND_MS} ms`)), BOUND_MS);
      createInterface({ input: child.stdout }).on('line', (line) => {
        if (!isReady(line)) return;
        clearTimeout(timer);
        resolve(performance.now() - startedMs);
      });
      exited
        .then(() => {
          clearTimeout(timer);
          reject(new Error(`bench: ${argv.join(' ').slice(0, 60)} exited before ready: ${stderr}`));
        })
        .catch(() => undefined);
    });
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
}

const logged = (msg: string) => (line: string): boolean => {
  try {
    return (JSON.parse(line) as { msg?: unknown }).msg === msg;
  } catch {
    return false;
  }
};

async function main(): Promise<void> {
  build();
  const root = benchDir();
  const fixture = await TetherFixture.start(root);
  try {
    console.log(`startup${args.isQuick ? ' (quick)' : ''}: ${STARTS} starts of each per round, ${args.rounds} interleaved rounds; spawn → ready`);
    const median = async (start: () => Promise<number>): Promise<{ ms: number }> => {
      const samples: number[] = [];
      for (let i = 0; i < STARTS; i++) samples.push(await start());
      return { ms: summarize(samples).median };
    };
    const withDir = async (run: (dir: string) => Promise<number>): Promise<number> => {
      const dir = mkdtempSync(join(root, 'tether-bench-start-'));
      try {
        return await run(dir);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    };
    const controlPlane = (launch: (binary: string) => string[]) => () =>
      median(() =>
        withDir((dir) =>
          timeToReady(
            [...launch('control-plane'), 'serve'],
            { TETHER_LISTEN: '127.0.0.1:0', TETHER_HTTP_LISTEN: '', TETHER_DATA_DIR: dir, TETHER_ADMIN_TOKEN: randomBytes(24).toString('base64url'), TETHER_LOG_LEVEL: 'info' },
            logged('control plane serving'),
          ),
        ),
      );
    const agentHost = (launch: (binary: string) => string[]) => () =>
      median(async () => {
        const { joinToken } = await fixture.enroll(`start-${randomBytes(4).toString('hex')}`);
        return withDir((dir) =>
          timeToReady(
            launch('agent-host'),
            { TETHER_SERVER: fixture.target, TETHER_HOST_DATA_DIR: dir, TETHER_JOIN_TOKEN: joinToken, TETHER_LOG_LEVEL: 'info', TETHER_HOST_METRICS_LISTEN: '' },
            logged('connected to control plane'),
          ),
        );
      });
    const runs = await interleave(
      args.rounds,
      {
        'control-plane': controlPlane(LAUNCHERS.compiled),
        'control-plane (tsx, before)': controlPlane(LAUNCHERS.tsx),
        'agent-host': agentHost(LAUNCHERS.compiled),
        'agent-host (tsx, before)': agentHost(LAUNCHERS.tsx),
        'raw grpc-js server': () => median(() => timeToReady(['-e', RAW_SERVER], {}, (line) => line.startsWith('ready '))),
        'node -e empty': () => median(() => timeToReady(['-e', "console.log('ready')"], {}, (line) => line === 'ready')),
      },
      (_, run) => `${run.ms.toFixed(0)} ms`,
    );
    const of = (name: keyof typeof runs): ReturnType<typeof summarize> => summarize(runs[name].map((r) => r.ms));
    const raw = of('raw grpc-js server');
    printTable([
      ['', 'ms to ready (range, spread)', '/ raw grpc-js server'],
      ...(['control-plane', 'control-plane (tsx, before)', 'agent-host', 'agent-host (tsx, before)', 'raw grpc-js server', 'node -e empty'] as const).map((name) => [
        name,
        describeSummary(of(name)),
        (of(name).median / raw.median).toFixed(2),
      ]),
    ]);
    console.log(
      resultLine('startup', of('control-plane').median / raw.median, {
        quick: args.isQuick,
        rounds: args.rounds,
        startsPerRound: STARTS,
        ratioMeaning: 'control-plane start / raw grpc-js server start (lower is better)',
        controlPlaneMs: round(of('control-plane').median, 0),
        controlPlaneSpreadPct: round(of('control-plane').spreadPct, 1),
        controlPlaneTsxMs: round(of('control-plane (tsx, before)').median, 0),
        controlPlaneOverTsx: round(of('control-plane').median / of('control-plane (tsx, before)').median),
        agentHostMs: round(of('agent-host').median, 0),
        agentHostSpreadPct: round(of('agent-host').spreadPct, 1),
        agentHostTsxMs: round(of('agent-host (tsx, before)').median, 0),
        agentHostOverTsx: round(of('agent-host').median / of('agent-host (tsx, before)').median),
        agentHostRatio: round(of('agent-host').median / raw.median),
        rawGrpcServerMs: round(raw.median, 0),
        nodeEmptyMs: round(of('node -e empty').median, 0),
      }),
    );
  } finally {
    await fixture.close();
  }
}

await main();
