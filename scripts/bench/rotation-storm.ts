/**
 * `npm run bench:rotation-storm`: agent-credential rotation at scale. A
 * control plane (SQLite on the real filesystem, `synchronous = FULL`) in this
 * process, and `--hosts` simulated hosts (each its own connection, see
 * sim-host.ts) carrying `--agents` agents in all, on a clock the benchmark
 * can stop and move (storm-clock.ts). Agent tokens live `--ttl-seconds`.
 *
 * Setup, clock frozen: every agent dispatched, so every first token is issued
 * at the same instant. Then waves, alternating two shapes, each until every
 * agent has rotated once more, clock frozen again between waves:
 * - all-due-at-once: the tokens the previous wave issued fall due at
 *   `iat + TTL/2` exactly (the control plane's jitter pinned to 0 for them),
 *   and the clock jumps to the last of those due times (never past the first
 *   expiry): every agent is due at the same moment, the storm a control plane
 *   meets after a key revocation or a long outage;
 * - jittered: the default policy (due at `iat + TTL·(0.5 + 0.1·u)`, `u`
 *   uniform), the clock jumping only to the first due time.
 * After the rounds, steady: the agents' tokens re-issued (forced rotations,
 * clock frozen) at times spread evenly over 0.45 TTL, so their due times
 * spread over about 0.55 TTL as they do on a control plane that has run a
 * while; then the clock runs from the first due time for 0.55 TTL (every agent
 * rotates about once, at the rate the fleet needs: agents / (0.55 × TTL)),
 * measured in 3 windows of equal length. This is the issue's "kept fresh"
 * goal: 0 expired, p99 lateness ≤ 1 % of the TTL.
 * Per wave: rotations per second (rotations over the wave's real duration),
 * lateness of each rotation at the simulated host against its due time (or
 * the wave's start, if later: the jump itself is not lateness), tokens that
 * expired while held (must be 0: checked at every arrival and every second),
 * and this process's CPU (control plane and simulated hosts together). The
 * signing-rate cap is lifted (it would otherwise be what is measured) unless
 * `--rate` sets one; the rate that keeps every token fresh, 2 × agents /
 * (0.55 × TTL), is printed beside it.
 *
 * Size: 20,000 agents over 200 hosts by default (quick: 5,000 over 50), so
 * `npm run bench` stays within 10 minutes; the issue's size is `--agents
 * 100000 --hosts 1000` (raise BENCH_BOUND_MS if a wave takes over 120 s).
 *
 * Baseline, interleaved (clock frozen, so nothing else runs): jose's
 * sequential EdDSA signing of the same claims in this process. The JSON
 * line's `ratio` is all-due-at-once rotations/s over that signing rate (the
 * issue's goal: at least 0.5).
 *
 * Flags: --quick, --rounds N (each round: one wave of each shape and one
 * baseline), --agents N, --hosts N, --ttl-seconds N, --rate N, --store
 * sqlite,postgres://… (the whole benchmark once per store, in that order, a
 * fresh SQLite file or PostgreSQL schema each; a table and a JSON line each).
 * BENCH_DIR: where the store goes (refused on tmpfs).
 */
import { generateKeyPair, SignJWT } from 'jose';
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { join } from 'node:path';
import type { Credential } from '../../gen/tether/v1/common.js';
import { parseBenchArgs, quantile, resultLine, round, storeLabel, summarize } from './bench-cli.js';
import { benchDir, describeSummary, eachLimited, printTable, unary, until } from './bench-support.js';
import { SimHost } from './sim-host.js';
import { StormClock } from './storm-clock.js';
import { TetherFixture } from './tether-fixture.js';

const args = parseBenchArgs(process.argv.slice(2), {
  agents: [20_000, 5_000],
  hosts: [200, 50],
  'ttl-seconds': [30, 30],
  rate: [1_000_000, 1_000_000],
});
const AGENTS = args.counts.agents as number;
const HOSTS = Math.min(args.counts.hosts as number, AGENTS);
const TTL_MS = (args.counts['ttl-seconds'] as number) * 1000;
const RATE = args.counts.rate as number;
/** The signing rate that keeps every token fresh (the issue's sizing rule): shown beside the cap in force. */
const NEEDED_RATE = Math.ceil((2 * AGENTS) / (0.55 * (TTL_MS / 1000)));
/** Signatures per baseline run. */
const BASELINE_SIGNATURES = Math.min(AGENTS, args.isQuick ? 2_000 : 10_000);

type Shape = 'all-due-at-once' | 'jittered';
/** Slices the steady phase's re-issue is spread over. */
const STEADY_SLICES = 45;
/**
 * How often held tokens are checked for expiry between arrivals (each arrival
 * checks its own): a token that expired stays so until replaced, so a second
 * misses none held that long, and at 100,000 agents a sweep every 250 ms was 5 %
 * of the process's time (the profile's "bench driver").
 */
const SWEEP_EVERY_MS = 1_000;
/** Windows the steady phase is measured in. */
const STEADY_WINDOWS = 3;

interface Held {
  expiresAtMs: number;
  generation: number;
  /** When the held token falls due (from the control plane's credential-issued event). */
  dueAtMs: number;
  /** The last wave in which this agent rotated. */
  wave: number;
  /** The generation last counted as expired while held (each counted once). */
  expiredGeneration: number;
}

interface Wave extends Record<string, number> {
  perSecond: number;
  p50LatenessMs: number;
  p99LatenessMs: number;
  maxLatenessMs: number;
  expired: number;
  cpuPct: number;
  /** This process's CPU (control plane and simulated hosts) per rotation, µs. */
  cpuUsPerRotation: number;
  /** The main thread's CPU per rotation, µs (the event loop: what bounds the rate while other cores are free; NaN off Linux). */
  loopUsPerRotation: number;
  wallMs: number;
}

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux). */
const USER_HZ = 100;

/**
 * CPU time of this process's main thread (the event loop) so far, µs, from
 * /proc (NaN where there is none): process.cpuUsage() also counts the thread
 * pool that signs, so it cannot tell how busy the loop itself is.
 */
function mainThreadCpuUs(): number {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / USER_HZ;
  } catch {
    return Number.NaN;
  }
}

/**
 * BENCH_CPU_PROF=dir: a V8 CPU profile of each wave (only the wave: not the
 * set-up nor the baseline), written as `<dir>/rotation-storm-<shape>-<n>.cpuprofile`.
 */
async function profileWave<T>(name: string, body: () => Promise<T>): Promise<T> {
  const dir = process.env.BENCH_CPU_PROF;
  if (dir === undefined || dir === '') return body();
  const session = new Session();
  session.connect();
  try {
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
    const result = await body();
    const { profile } = await session.post('Profiler.stop');
    writeFileSync(join(dir, `rotation-storm-${name}.cpuprofile`), JSON.stringify(profile));
    return result;
  } finally {
    session.disconnect();
  }
}

async function main(store: string): Promise<void> {
  const root = benchDir();
  const clock = new StormClock();
  clock.freeze();
  // The jitter of the tokens being issued now: pinned to 0 while the next wave is to be all due at once.
  let nextShape: Shape = 'all-due-at-once';
  const fixture = await TetherFixture.start(
    root,
    {
      clock,
      agentTokenTtlMs: TTL_MS,
      maxRotationsPerSecond: RATE,
      heartbeatIntervalMs: 24 * 3_600_000,
      random: () => (nextShape === 'all-due-at-once' ? 0 : Math.random()),
    },
    store,
  );
  const held = new Map<string, Held>();
  const dueOf = new Map<string, { generation: number; dueAtMs: number }>();
  fixture.cp.events.on('credential-issued', (e) => {
    if (e.agentId !== '') dueOf.set(e.agentId, { generation: e.generation, dueAtMs: e.rotationDueAtMs });
  });
  let wave = 0;
  let waveStartMs = 0;
  let rotatedInWave = 0;
  let rotationsInWave = 0;
  let expired = 0;
  let lateness: number[] = [];
  const dueFor = (agentId: string, generation: number): number => {
    const due = dueOf.get(agentId);
    return due !== undefined && due.generation === generation ? due.dueAtMs : Number.NaN;
  };
  const hooks = {
    onStart: (agentId: string, credential: Credential) => {
      held.set(agentId, { expiresAtMs: credential.expiresAtMs, generation: credential.generation, dueAtMs: dueFor(agentId, credential.generation), wave: 0, expiredGeneration: 0 });
    },
    onRotated: (agentId: string, credential: Credential) => {
      const entry = held.get(agentId);
      if (entry === undefined || credential.generation <= entry.generation) return;
      const nowMs = clock.now();
      if (nowMs >= entry.expiresAtMs && entry.expiredGeneration !== entry.generation) {
        expired++;
        entry.expiredGeneration = entry.generation;
      }
      lateness.push(nowMs - Math.max(entry.dueAtMs, waveStartMs));
      rotationsInWave++;
      if (entry.wave !== wave) {
        entry.wave = wave;
        rotatedInWave++;
      }
      entry.expiresAtMs = credential.expiresAtMs;
      entry.generation = credential.generation;
      entry.dueAtMs = dueFor(agentId, credential.generation);
    },
  };
  const sweep = (): void => {
    const nowMs = clock.now();
    for (const entry of held.values()) {
      if (nowMs >= entry.expiresAtMs && entry.expiredGeneration !== entry.generation) {
        expired++;
        entry.expiredGeneration = entry.generation;
      }
    }
  };

  const hosts: SimHost[] = [];
  try {
    const setupStartedMs = performance.now();
    const hostIds: string[] = [];
    // A few Hellos at once: the control plane defers past 32 at once, and a simulated host does not retry.
    await eachLimited(Array.from({ length: HOSTS }, (_, i) => i), 16, async (i) => {
      const { hostId, joinToken } = await fixture.enroll(`sim-${i}`);
      const host = SimHost.connect(fixture.target, joinToken, clock, hooks);
      hosts.push(host);
      await host.welcomed;
      hostIds[i] = hostId;
    });
    await fixture.dispatch(
      Array.from({ length: AGENTS }, (_, i) => ({ agentId: `storm-${i}`, hostId: hostIds[i % HOSTS] as string, module: 'idle' })),
      128,
    );
    await until(() => held.size === AGENTS, `${AGENTS} agents started`);
    const setupMs = performance.now() - setupStartedMs;
    console.log(
      `rotation-storm${args.isQuick ? ' (quick)' : ''}: ${AGENTS} agents over ${HOSTS} simulated hosts (set up in ${(setupMs / 1000).toFixed(1)} s), ` +
        `TTL ${TTL_MS / 1000} s, signing cap ${RATE}/s (needed to stay fresh: ${NEEDED_RATE}/s), ${args.rounds} interleaved rounds; control plane (${store === 'sqlite' ? 'SQLite, synchronous = FULL' : 'PostgreSQL, a fresh schema'}) in this process`,
    );

    const key = (await generateKeyPair('EdDSA', { crv: 'Ed25519' })).privateKey;
    const baseline = async (): Promise<number> => {
      const startedMs = performance.now();
      for (let i = 0; i < BASELINE_SIGNATURES; i++) {
        const issuedAtS = Math.floor(clock.now() / 1000);
        await new SignJWT({ gen: 7, host: hostIds[i % HOSTS], inc: 1 })
          .setProtectedHeader({ alg: 'EdDSA', kid: 'bench-key', typ: 'tether-agent+jwt' })
          .setIssuer('tether')
          .setAudience('tether')
          .setSubject(`storm-${i}`)
          .setJti(randomUUID())
          .setIssuedAt(issuedAtS)
          .setNotBefore(issuedAtS)
          .setExpirationTime(issuedAtS + TTL_MS / 1000)
          .sign(key);
      }
      return BASELINE_SIGNATURES / ((performance.now() - startedMs) / 1000);
    };

    /** Runs the clock (sweeping expiries) until `isDone` settles, then the wave's figures: CPU, rate, lateness, expired. */
    const measureWave = async (expiredBefore: number, isDone: () => Promise<void>): Promise<Wave> => {
      const cpuAt = process.cpuUsage();
      const loopAtUs = mainThreadCpuUs();
      const startedMs = performance.now();
      clock.resume();
      const sweeper = setInterval(sweep, SWEEP_EVERY_MS);
      try {
        await isDone();
      } finally {
        clearInterval(sweeper);
      }
      clock.freeze();
      const wallMs = performance.now() - startedMs;
      const cpu = process.cpuUsage(cpuAt);
      const loopUs = mainThreadCpuUs() - loopAtUs;
      sweep();
      return {
        cpuUsPerRotation: (cpu.user + cpu.system) / Math.max(1, rotationsInWave),
        loopUsPerRotation: loopUs / Math.max(1, rotationsInWave),
        perSecond: rotationsInWave / (wallMs / 1000),
        p50LatenessMs: quantile(lateness, 0.5),
        p99LatenessMs: quantile(lateness, 0.99),
        maxLatenessMs: quantile(lateness, 1),
        expired: expired - expiredBefore,
        cpuPct: ((cpu.user + cpu.system) / 1000 / wallMs) * 100,
        wallMs,
      };
    };

    const runWave = async (shape: Shape, followedBy: Shape): Promise<Wave> => {
      wave++;
      nextShape = followedBy;
      let lastDueMs = Number.NEGATIVE_INFINITY;
      let firstDueMs = Number.POSITIVE_INFINITY;
      let firstExpiryMs = Number.POSITIVE_INFINITY;
      for (const entry of held.values()) {
        lastDueMs = Math.max(lastDueMs, entry.dueAtMs);
        firstDueMs = Math.min(firstDueMs, entry.dueAtMs);
        firstExpiryMs = Math.min(firstExpiryMs, entry.expiresAtMs);
      }
      if (!Number.isFinite(lastDueMs) || !Number.isFinite(firstDueMs)) throw new Error('bench: an agent holds a token whose due time was never reported');
      waveStartMs = shape === 'all-due-at-once' ? Math.min(lastDueMs, firstExpiryMs - 1) : firstDueMs;
      rotatedInWave = 0;
      rotationsInWave = 0;
      lateness = [];
      const expiredBefore = expired;
      clock.jumpTo(waveStartMs);
      return measureWave(expiredBefore, () => until(() => rotatedInWave === AGENTS, `every agent rotated in wave ${wave}`, 5));
    };

    /** Re-issues every agent's token (forced rotations, clock frozen) at times spread evenly over 0.45 TTL. */
    const spreadIssueTimes = async (): Promise<void> => {
      nextShape = 'jittered';
      const startMs = clock.now();
      const ids = Array.from({ length: AGENTS }, (_, i) => `storm-${i}`);
      for (let k = 0; k < STEADY_SLICES; k++) {
        clock.jumpTo(startMs + Math.floor((k * 0.45 * TTL_MS) / STEADY_SLICES));
        const slice = ids.filter((_, i) => i % STEADY_SLICES === k);
        await eachLimited(slice, 128, async (agentId) => {
          await unary(fixture.admin.rotateAgentCredential.bind(fixture.admin), { agentId });
        });
      }
      // Every host holds the last token issued to each of its agents (pushes may still be on their way).
      const isCaughtUp = (): boolean => {
        for (const [agentId, entry] of held) if (dueOf.get(agentId)?.generation !== entry.generation) return false;
        return true;
      };
      await until(isCaughtUp, 'every re-issued token held', 5);
    };

    /** One steady window: the clock runs from `fromMs` to `toMs`; every rotation's lateness against its due time. */
    const runSteadyWindow = async (fromMs: number, toMs: number): Promise<Wave> => {
      wave++;
      // Against the due time alone: no one is due before the first window, and the clock stands still between windows.
      waveStartMs = Number.NEGATIVE_INFINITY;
      rotationsInWave = 0;
      lateness = [];
      const expiredBefore = expired;
      clock.jumpTo(fromMs);
      return measureWave(expiredBefore, () => until(() => clock.now() >= toMs, `the steady window to ${toMs}`, 5));
    };

    const results: { baseline: number[]; 'all-due-at-once': Wave[]; jittered: Wave[]; steady: Wave[] } = { baseline: [], 'all-due-at-once': [], jittered: [], steady: [] };
    for (let r = 1; r <= args.rounds; r++) {
      const signing = await baseline();
      results.baseline.push(signing);
      console.log(`  round ${r}, jose EdDSA signing: ${signing.toFixed(0)}/s`);
      for (const [shape, next] of [['all-due-at-once', 'jittered'], ['jittered', 'all-due-at-once']] as const) {
        const w = await profileWave(`${shape}-${r}`, () => runWave(shape, next));
        results[shape].push(w);
        console.log(
          `  round ${r}, ${shape}: ${w.perSecond.toFixed(0)} rotations/s over ${(w.wallMs / 1000).toFixed(1)} s, lateness p50 ${w.p50LatenessMs.toFixed(0)} ms ` +
            `p99 ${w.p99LatenessMs.toFixed(0)} ms max ${w.maxLatenessMs.toFixed(0)} ms, ${w.expired} expired, CPU ${w.cpuPct.toFixed(0)} % (${w.cpuUsPerRotation.toFixed(0)} µs per rotation, ${w.loopUsPerRotation.toFixed(0)} on the event loop)`,
        );
      }
    }
    const spreadStartedMs = performance.now();
    await spreadIssueTimes();
    let firstDueMs = Number.POSITIVE_INFINITY;
    for (const entry of held.values()) firstDueMs = Math.min(firstDueMs, entry.dueAtMs);
    if (!Number.isFinite(firstDueMs)) throw new Error('bench: an agent holds a token whose due time was never reported');
    console.log(`  steady: ${AGENTS} tokens re-issued over 0.45 TTL of frozen time in ${((performance.now() - spreadStartedMs) / 1000).toFixed(1)} s; needed ${Math.round(AGENTS / (0.55 * (TTL_MS / 1000)))} rotations/s`);
    const windowMs = Math.floor((0.55 * TTL_MS) / STEADY_WINDOWS);
    for (let i = 0; i < STEADY_WINDOWS; i++) {
      const fromMs = firstDueMs + i * windowMs;
      const w = await profileWave(`steady-${i + 1}`, () => runSteadyWindow(fromMs, fromMs + windowMs));
      results.steady.push(w);
      console.log(
        `  steady window ${i + 1}: ${w.perSecond.toFixed(0)} rotations/s over ${(w.wallMs / 1000).toFixed(1)} s, lateness p50 ${w.p50LatenessMs.toFixed(0)} ms ` +
          `p99 ${w.p99LatenessMs.toFixed(0)} ms max ${w.maxLatenessMs.toFixed(0)} ms, ${w.expired} expired, CPU ${w.cpuPct.toFixed(0)} % (${w.cpuUsPerRotation.toFixed(0)} µs per rotation, ${w.loopUsPerRotation.toFixed(0)} on the event loop)`,
      );
    }
    const signing = summarize(results.baseline);
    const rows: string[][] = [['', 'rotations/s (range, spread)', '/ signing', 'lateness p50 ms', 'lateness p99 ms', 'p99 / TTL', 'expired held', 'CPU %', 'CPU µs / rotation', 'event loop µs / rotation']];
    const figures: Record<string, unknown> = {};
    for (const shape of ['all-due-at-once', 'jittered', 'steady'] as const) {
      const waves = results[shape];
      const rate = summarize(waves.map((w) => w.perSecond));
      const p99 = summarize(waves.map((w) => w.p99LatenessMs));
      const expiredHeld = waves.reduce((sum, w) => sum + w.expired, 0);
      rows.push([
        shape,
        describeSummary(rate),
        (rate.median / signing.median).toFixed(3),
        summarize(waves.map((w) => w.p50LatenessMs)).median.toFixed(0),
        describeSummary(p99),
        `${((p99.median / TTL_MS) * 100).toFixed(2)} %`,
        String(expiredHeld),
        summarize(waves.map((w) => w.cpuPct)).median.toFixed(0),
        summarize(waves.map((w) => w.cpuUsPerRotation)).median.toFixed(0),
        summarize(waves.map((w) => w.loopUsPerRotation)).median.toFixed(0),
      ]);
      figures[shape] = {
        rotationsPerSecond: round(rate.median, 0),
        spreadPct: round(rate.spreadPct, 1),
        ratioToSigning: round(rate.median / signing.median),
        p50LatenessMs: round(summarize(waves.map((w) => w.p50LatenessMs)).median, 1),
        p99LatenessMs: round(p99.median, 1),
        p99LatenessPctOfTtl: round((p99.median / TTL_MS) * 100, 3),
        expired: expiredHeld,
        cpuPct: round(summarize(waves.map((w) => w.cpuPct)).median, 0),
        cpuUsPerRotation: round(summarize(waves.map((w) => w.cpuUsPerRotation)).median, 0),
        loopUsPerRotation: round(summarize(waves.map((w) => w.loopUsPerRotation)).median, 0),
      };
    }
    rows.push(['jose EdDSA signing, sequential (baseline)', describeSummary(signing), '1.000', '', '', '', '', '', (1e6 / signing.median).toFixed(0), '']);
    printTable(rows);
    const all = figures['all-due-at-once'] as { ratioToSigning: number };
    const totalExpired = results['all-due-at-once'].concat(results.jittered, results.steady).reduce((sum, w) => sum + w.expired, 0);
    console.log(
      resultLine('rotation-storm', all.ratioToSigning, {
        quick: args.isQuick,
        rounds: args.rounds,
        store: storeLabel(store),
        agents: AGENTS,
        hosts: HOSTS,
        ttlSeconds: TTL_MS / 1000,
        maxRotationsPerSecond: RATE,
        neededRotationsPerSecond: NEEDED_RATE,
        setupSeconds: round(setupMs / 1000, 1),
        signingPerSecond: round(signing.median, 0),
        signingSpreadPct: round(signing.spreadPct, 1),
        expired: totalExpired,
        ...figures,
      }),
    );
    if (totalExpired > 0) process.exitCode = 1;
  } finally {
    clock.resume();
    for (const host of hosts) host.close();
    await fixture.close();
  }
}

for (const store of args.stores) await main(store);
