/**
 * `npm run soak -- --minutes N [--seed S] [--storm-hosts N]`: the chaos soak.
 *
 * What runs: `control-plane serve` as a child process (bin/control-plane.js, a
 * data directory in a temp folder, short agent TTL, a lost-host grace of half
 * of it, real clock), and in this process several agent hosts, each on a
 * channel of its own and through a fault proxy of its own, all carrying the
 * label soak=any, with module agents that record every message they are given
 * and keep making tool calls (WhoAmI and Heartbeat as themselves, now and then
 * a Heartbeat for another agent, which must be refused). Two thirds of the
 * agents are DISPATCHED to a fixed host (restart policy never: they never
 * move); a third are ENSURED (EnsureAgent, placed by the label among all
 * hosts: they move when their host is lost). A sender keeps a steady load of
 * messages going (idempotency keys, retries).
 *
 * What breaks, at seeded random moments (the seed is printed; --seed replays
 * the schedule): SIGKILL and restart of the control plane (same port, same data
 * directory); a control-plane OUTAGE: SIGKILL when the hosts' lowest
 * time-to-expiry is near its minimum (within a band above 40 % of the TTL, or
 * of the lowest the rotation schedule has let it fall to; waited for, bounded
 * by one rotation cycle), kept down for a seeded time so that it listens again
 * at most TTL/3 − 3 s − its start time after the kill (long enough for several
 * reconnect attempts: the host's backoff grows), then restarted on the same
 * port and data directory, printing per host the time from listening to its
 * Welcome; a host crash (its proxy closed at once and every agent of it dead
 * on the spot, a new host started from the same data directory within the
 * grace: the agents start again there, so what the dead ones had taken may
 * come again); a HOST DEATH: the host with the most ensured agents crashed the
 * same way and left dead past the lost-host grace: its ensured agents must run
 * on other hosts, with every message confirmed before the death delivered,
 * within the control plane's own bound (its grace and sweep, or the last token
 * of the old incarnation expired, plus the tolerance, whichever is later, plus
 * 8 s); then it returns from its data directory, its dispatched agents start
 * again there and no copy of a moved agent may (one that starts must be
 * stopped having taken nothing and made no successful call); a cut of one
 * host's connections; a blackhole shorter than a third of the TTL; a LONG
 * PARTITION, a blackhole of the host with the most ensured agents for 1.6 to
 * 1.7 TTLs (past the grace: the host fences itself; the control plane sees
 * the silent stream gone at its keepalive, 5 s here, and from then its
 * ensured agents must run on another host within the same bound as after a
 * host death, which falls before the heal but for a slow notice), after which
 * the host must be connected and every dispatched agent of it rotated
 * (bounded); a DRAIN of the host with the most ensured agents under load
 * (its ensured agents must run elsewhere, its dispatched ones stay, nothing
 * is taken twice; then UncordonHost); a HUNG
 * AGENT, dispatched to one host as module `hang` (onMessage never settles, the
 * abort signal and close ignored), given a message and stopped: its host must
 * report it abandoned after its stop deadline (5 s on soak hosts) while the
 * other agents of that host take messages and apply a rotation forced
 * meanwhile; a signing-key rotation; a forced rotation of every agent. The
 * first phase has every kind; the second has all but control-plane restarts
 * and outages, so the control plane's memory is compared across a stretch one
 * process lived. Long partitions and host deaths run first thing in a phase
 * and again only where the phase has room (a long partition 2.7·TTL + 10 s; a
 * host death what its agents' token expiries make it need, asked before it
 * starts); the summary says "skipped, run too short" otherwise. With the
 * default 50 s TTL a 2-minute run has a host death in its first phase (its
 * agents placed at most about 52 s in, of its 60 s) but no long partition;
 * `--minutes 6` has a long partition and host deaths, `--minutes 8` a long
 * partition in each phase.
 *
 * Who judges: an independent ledger of what the sender was told and what the
 * agents received and saw (scripts/soak/ledger.ts). A 401 counts against the
 * promise unless the FAULT SCHEDULE excuses it, never what was observed (a
 * host slow to come back is the failure the promise is about): only a
 * scheduled outage of its host (a blackhole of its link, the control plane
 * down) that had lasted more than TTL/3, or one that did and ended less than
 * TTL/3 before. Control-plane outages and short blackholes are below TTL/3, so
 * in practice only long partitions excuse: see scripts/soak/reachability.ts
 * (a dead host's agents are dead: nothing they see counts). A host may fence
 * itself only inside such a long outage. An agent started on another host
 * than its last is a MOVE, allowed for ensured agents only; what the new copy
 * takes again is a redelivery, counted apart. NEVER TWO COPIES AT ONCE, judged
 * at the end over every pair of instances (host slot, host incarnation, start)
 * of an agent: their stretches of receipts must not overlap, nor may their
 * own successful calls have been certainly accepted over overlapping stretches
 * (each call accepted somewhere between its start and end; see
 * Ledger.judgeOverlaps), and a move must come with a new incarnation (WhoAmI).
 * At the end every ensured agent is `running` (GetAgent) on a connected host
 * where the soak sees its one live instance. Memory:
 * heap after a full collection, RSS and open descriptors (/proc/<pid>/fd) of
 * this process and the control plane, at quiet points (no fault active, load
 * paused, every message delivered, after GC). Exits 1 if any promise broke,
 * if heap grew more than 20 % or descriptors by more than 5 between the last
 * two quiet points, or if anything did not finish within its bound.
 *
 * Flags: --minutes (2), --seed, --hosts (3), --agents (30, a third ensured),
 * --agent-ttl (50s; the lost-host grace is half of it), --rate (messages per
 * second, 40), --storm-hosts (0: no storm), --keep (keep the temp folder),
 * --heap-snapshots (both processes, at each quiet point), --store (`sqlite`,
 * the default, or `postgres://…`: a fresh schema on that server for this run,
 * which every control-plane child is given; dropped at the end unless kept,
 * as the temp folder is). Every wait is
 * bounded and a watchdog ends a soak that runs far past its time. Tokens never
 * reach any output; the logs are checked.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Command, Option } from 'commander';
import { pino } from 'pino';
import { AgentHost } from '../agent-host/agent-host.js';
import { FileHostCredentialStore } from '../agent-host/host-credential-store.js';
import type { AgentContext, AgentModule } from '../agent-host/tools/agent-module.js';
import { bearerInterceptor } from '../agent-host/tools/call-credentials.js';
import { SystemClock } from '../common/clock.js';
import { parseCount, parseDurationMs } from '../common/cli.js';
import { TetherError } from '../common/errors.js';
import { createLogger, type Logger } from '../common/logger.js';
import { AdminServiceClient } from '../gen/tether/v1/admin.js';
import { AgentState } from '../gen/tether/v1/common.js';
import { isPostgresUrl, redactConnectionString } from '../control-plane/store/postgres-url.js';
import { ControlPlaneProcess } from './support/control-plane-process.js';
import { createScratchSchema, type ScratchSchema } from './support/scratch-schema.js';
import { FaultProxy } from './support/fault-proxy.js';
import { Ledger, type AgentInstance, type CallOutcome } from './soak/ledger.js';
import { measureChild, measureSelf, mib, type MemorySnapshot } from './soak/memory.js';
import { Reachability } from './soak/reachability.js';
import { SeededRandom } from './soak/seeded-random.js';
import { runStorm, type StormResult } from './soak/storm.js';
import { codeOf, pause, unary, waitFor, within } from './soak/waiting.js';

/** Bound on any one step (a restart, a reconnect, a quiet point's drain): only catches a hang. */
const STEP_BOUND_MS = 120_000;
/** Bound on one admin or send call. */
const CALL_BOUND_MS = 15_000;
/** Growth between the last two quiet points that fails the soak. */
const MAX_HEAP_GROWTH = 0.2;
const MAX_FD_GROWTH = 5;
/** Anything shaped like a compact JWS: never allowed in a log. */
const JWT_SHAPE = /eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/;

/** How long a soak host gives a stopping agent before it abandons it (`stopDeadlineMs`). */
const STOP_DEADLINE_MS = 5_000;
/** A control-plane outage (kill to listening again) stays this far below TTL/3, besides the restart time. */
const OUTAGE_MARGIN_MS = 3_000;
/** Rotations fall due at 40 % of a token's life left: outages start when the lowest left is within a band above it. */
const ROTATION_LEFT_FRACTION = 0.4;
/** The control plane's clock tolerance in the soak (same machine, no skew). */
const CLOCK_TOLERANCE_MS = 2_000;
/**
 * Past what the control plane's own timers allow (its lost-host sweep, its fence wait), how long
 * the soak gives the agents of a lost host to be running elsewhere: the placement and start.
 */
const MOVE_MARGIN_MS = 8_000;
/** What a dead host's return takes, for the room a host death needs (its wait is bounded apart). */
const RETURN_ESTIMATE_MS = 5_000;
/**
 * The control plane's transport keepalive in the soak (TETHER_KEEPALIVE; its timeout is 10 s): a
 * silent partition ends the host's stream on the control plane only when a keepalive goes
 * unanswered, and the lost-host grace counts from then. The default (30 s) is about 1 % of the
 * default 1 h TTL; against the soak's 50 s TTL it would keep a partitioned host from being lost
 * for up to 40 s past the grace, so the soak scales it down.
 */
const CP_KEEPALIVE_MS = 5_000;
/**
 * A long partition lasts this many TTLs: past the keepalive's notice (≤ 15 s) and the last token a
 * rotation may have sent into the void meanwhile (a TTL) plus the tolerance and the margin, so
 * its ensured agents must run on another host before it heals.
 */
const LONG_PARTITION_TTLS = [1.6, 1.7] as const;
/** The label every soak host carries, and ensured agents ask for: they may be placed on any host. */
const SOAK_LABEL = { key: 'soak', value: 'any' } as const;

/**
 * The lost-host grace the soak's control plane runs with: half the TTL (the least it accepts is a
 * third plus the tolerance). Short enough that a host death fits a 2-minute soak's first phase,
 * long enough that the host fences itself (a tolerance before it) well after any short outage the
 * schedule makes (below TTL/3 − 3 s) and its reconnect.
 */
function lostHostGraceMs(agentTtlMs: number): number {
  return Math.max(Math.ceil(agentTtlMs / 3) + CLOCK_TOLERANCE_MS, Math.floor(agentTtlMs / 2));
}

/** Whether the `index`-th soak agent is created with EnsureAgent (a third of them, spread over the slots), else dispatched to a slot. */
function isEnsuredIndex(index: number, hosts: number): boolean {
  return Math.floor(index / hosts) % 3 === 2;
}

type FaultKind = 'cp-restart' | 'cp-outage' | 'host-crash' | 'host-death' | 'drain' | 'cut' | 'blackhole' | 'long-partition' | 'hung-agent' | 'key-rotation' | 'rotate-all';
const ALL_FAULTS: readonly FaultKind[] = ['cp-restart', 'cp-outage', 'host-crash', 'host-death', 'drain', 'cut', 'blackhole', 'long-partition', 'hung-agent', 'key-rotation', 'rotate-all'];
/** Faults that need a long stretch of the phase (run first thing, and again only where the phase has room). */
const LONG_FAULTS: readonly FaultKind[] = ['long-partition', 'host-death'];
/** Faults that take the control plane down: not in the second phase, whose memory is of one process. */
const CONTROL_PLANE_FAULTS: readonly FaultKind[] = ['cp-restart', 'cp-outage'];

/** One control-plane outage's figures, for the summary. */
interface OutageRecord {
  /** Kill to listening again. */
  downMs: number;
  /** The lowest time-to-expiry over every host when it was killed. */
  lowestLeftAtKillMs: number;
  /** Per host: listening again to its Welcome ('connected'). */
  helloAfterListenMs: number[];
  /** Per host: reconnect attempts (stream losses) while it was down, and the longest retry delay drawn. */
  attempts: number[];
  longestRetryMs: number[];
}

/** One hung agent's figures. */
interface HungRecord {
  agentId: string;
  slot: number;
  /** StopAgent sent to the host reporting it stopped. */
  stopToReportMs: number;
  outcome: string;
  /** Messages other agents of its host took, and rotations they applied, while it was being stopped. */
  neighbourMessages: number;
  neighbourRotations: number;
}

interface SoakOptions {
  minutes: number;
  seed: number;
  hosts: number;
  agents: number;
  agentTtlMs: number;
  rate: number;
  stormHosts: number;
  isKeeping: boolean;
  /** `sqlite` (in the control plane's data directory) or the `postgres://` server a scratch schema is made on. */
  store: string;
  /** Heap snapshots of both processes at each quiet point, in the kept temp folder. */
  isSnapshotting: boolean;
}

function parseOptions(argv: readonly string[]): SoakOptions {
  const program = new Command('soak')
    .description('Tether chaos soak')
    .addOption(new Option('--minutes <n>', 'how long the chaos runs').default(2).argParser((v) => positive(v, '--minutes')))
    .addOption(new Option('--seed <n>', 'seed of the fault schedule (printed; replays it)').argParser(parseCount))
    .addOption(new Option('--hosts <n>', 'agent hosts').default(3).argParser(parseCount))
    .addOption(new Option('--agents <n>', 'module agents over all hosts').default(30).argParser(parseCount))
    .addOption(new Option('--agent-ttl <duration>', 'agent token lifetime').default(50_000, '50s').argParser(parseDurationMs))
    .addOption(new Option('--rate <n>', 'messages per second, all agents together').default(40).argParser(parseCount))
    .addOption(new Option('--storm-hosts <n>', 'after the chaos, a reconnect storm of this many hosts (0: none)').default(0).argParser(parseCount))
    .addOption(new Option('--keep', 'keep the temp folder (data, logs) even if the soak passed'))
    .addOption(new Option('--heap-snapshots', 'write heap snapshots of both processes at each quiet point (implies --keep)'))
    .addOption(new Option('--store <store>', 'sqlite, or postgres://… (a fresh schema there for this run)').default('sqlite'))
    .exitOverride();
  program.parse(argv);
  const flags = program.opts<{ minutes: number; seed?: number; hosts: number; agents: number; agentTtl: number; rate: number; stormHosts: number; keep?: boolean; heapSnapshots?: boolean; store: string }>();
  if (flags.store !== 'sqlite' && !isPostgresUrl(flags.store)) throw new Error('--store must be sqlite or a postgres:// connection string');
  if (flags.hosts < 1 || flags.agents < flags.hosts || flags.rate < 1) throw new Error('need at least one host, an agent per host and a rate of at least 1');
  if (flags.agentTtl < 15_000) throw new Error('--agent-ttl must be at least 15s (blackholes are up to a third of it, minus margins)');
  return {
    minutes: flags.minutes,
    seed: flags.seed ?? randomInt(0, 2 ** 31),
    hosts: flags.hosts,
    agents: flags.agents,
    agentTtlMs: flags.agentTtl,
    rate: flags.rate,
    stormHosts: flags.stormHosts,
    isKeeping: flags.keep === true || flags.heapSnapshots === true,
    isSnapshotting: flags.heapSnapshots === true,
    store: flags.store,
  };
}

/** The `--store` part of the replay command (the server's URL without its password; nothing for SQLite). */
function replayStore(options: SoakOptions): string {
  return options.store === 'sqlite' ? '' : ` --store ${redactConnectionString(options.store)}`;
}

function positive(value: string, name: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed <= 0) throw new Error(`${name} must be a positive number, got ${value}`);
  return parsed;
}

/** One host position: its data directory survives the host crashing; its proxy and host are replaced. */
interface HostSlot {
  readonly index: number;
  readonly dataDir: string;
  readonly reach: Reachability;
  hostId: string;
  proxy: FaultProxy;
  host: AgentHost;
  incarnation: number;
}

/** A quiet point's figures. */
interface QuietPoint {
  name: string;
  atMs: number;
  soak: MemorySnapshot;
  controlPlane: MemorySnapshot;
}

/**
 * The steady message load: workers, each owning some agents and sending to
 * them in turn, one batch at a time, so each agent's messages go in send
 * order. A batch is retried with the same idempotency keys until it is in.
 */
class Load {
  readonly #admin: AdminServiceClient;
  readonly #ledger: Ledger;
  readonly #agentIds: readonly string[];
  readonly #rate: number;
  readonly #random: SeededRandom;
  readonly #nextIndex = new Map<string, number>();
  readonly #workers: Promise<void>[] = [];
  #isPaused = false;
  #isStopped = false;
  #inFlight = 0;
  retries = 0;
  readonly retryCodes = new Map<string, number>();

  constructor(admin: AdminServiceClient, ledger: Ledger, agentIds: readonly string[], rate: number, random: SeededRandom) {
    this.#admin = admin;
    this.#ledger = ledger;
    this.#agentIds = agentIds;
    this.#rate = rate;
    this.#random = random;
  }

  start(workers: number): void {
    for (let w = 0; w < workers; w++) {
      const mine = this.#agentIds.filter((_, i) => i % workers === w);
      this.#workers.push(this.#work(mine, workers));
    }
  }

  /** Stops starting batches and waits for those under way (bounded). */
  async pause(): Promise<void> {
    this.#isPaused = true;
    await waitFor(() => this.#inFlight === 0, 'the sends under way to finish', STEP_BOUND_MS);
  }

  resume(): void {
    this.#isPaused = false;
  }

  async stop(): Promise<void> {
    this.#isStopped = true;
    await within(Promise.all(this.#workers), 'the senders to stop', STEP_BOUND_MS);
  }

  async #work(agentIds: readonly string[], workers: number): Promise<void> {
    for (let turn = 0; !this.#isStopped; turn++) {
      if (this.#isPaused) {
        await pause(50);
        continue;
      }
      const agentId = agentIds[turn % agentIds.length];
      if (agentId === undefined) return;
      const count = this.#random.int(1, 3);
      this.#inFlight++;
      try {
        await this.#sendBatch(agentId, count);
      } finally {
        this.#inFlight--;
      }
      // Paced so that all workers together send about `rate` messages a second.
      await pause((count * workers * 1000) / this.#rate);
    }
  }

  async #sendBatch(agentId: string, count: number): Promise<void> {
    const first = this.#nextIndex.get(agentId) ?? 0;
    const request = {
      agentId,
      messages: Array.from({ length: count }, (_, i) => ({ contentType: 'text/plain', payload: Ledger.payload(agentId, first + i), idempotencyKey: `${agentId}/${first + i}` })),
    };
    for (let attempt = 0; ; attempt++) {
      try {
        const response = await unary(this.#admin.sendMessages.bind(this.#admin), request, CALL_BOUND_MS);
        response.messages.forEach((sent, i) => this.#ledger.onSendConfirmed(agentId, first + i, sent.seq));
        this.#nextIndex.set(agentId, first + count);
        return;
      } catch (err) {
        // Retried with the same keys, however it failed: the outbox answers a repeat with the seq it gave.
        this.retries++;
        const code = grpc.status[codeOf(err) ?? grpc.status.UNKNOWN] ?? 'UNKNOWN';
        this.retryCodes.set(code, (this.retryCodes.get(code) ?? 0) + 1);
        if (this.#isStopped) return;
        await pause(Math.min(2_000, 100 * 2 ** Math.min(attempt, 5)));
      }
    }
  }
}

/** How a tool call ended, in the ledger's words. */
function outcomeOf(err: unknown): CallOutcome {
  if (!(err instanceof TetherError)) return 'other';
  switch (err.code) {
    case 'unauthenticated':
    case 'token-expired':
    case 'token-revoked':
      return 'unauthenticated';
    case 'permission-denied':
      return 'permission-denied';
    case 'unavailable':
      return 'unavailable';
    default:
      return 'other';
  }
}

/** Runs the soak; resolves with the exit code. */
async function soak(options: SoakOptions, startedAtMs: number): Promise<number> {
  const elapsed = (): number => Date.now() - startedAtMs;
  const stamp = (): string => `[+${(elapsed() / 1000).toFixed(1)}s]`;
  const say = (line: string): void => console.log(`${stamp()} ${line}`);
  const { agentTtlMs } = options;
  const graceMs = lostHostGraceMs(agentTtlMs);
  /** The control plane's lost-host sweep (see control-plane.ts): a host is declared lost at most this long after the grace. */
  const lostSweepMs = Math.min(30_000, Math.max(1_000, Math.floor(graceMs / 20)));
  const totalMs = options.minutes * 60_000;
  const warmupMs = Math.min(60_000, Math.max(10_000, totalMs * 0.12));
  const phase1Ms = totalMs * 0.5;
  const phase2Ms = Math.max(10_000, totalMs - warmupMs - phase1Ms);
  const faults = SeededRandom.derived(options.seed, 'faults');
  const loadRandom = SeededRandom.derived(options.seed, 'load');
  console.log(
    `soak: seed=${options.seed} minutes=${options.minutes} hosts=${options.hosts} agents=${options.agents} agent-ttl=${agentTtlMs / 1000}s lost-host-grace=${graceMs / 1000}s rate=${options.rate}/s` +
      ` store=${options.store === 'sqlite' ? 'sqlite' : redactConnectionString(options.store)} (replay: npm run soak -- --minutes ${options.minutes} --seed ${options.seed}${replayStore(options)})`,
  );
  // PostgreSQL: a schema of this run's own, given to every control-plane child (restarts find the same state).
  const schema: ScratchSchema | undefined = isPostgresUrl(options.store) ? await createScratchSchema(options.store, 'soak') : undefined;
  const storeEnv: Record<string, string> = schema === undefined ? {} : { TETHER_STORE: schema.url };

  const dir = mkdtempSync(join(tmpdir(), 'tether-soak-'));
  const cpLogPath = join(dir, 'control-plane.log');
  const hostLogPath = join(dir, 'hosts.log');
  const cpLog = createWriteStream(cpLogPath, { flags: 'a' });
  const hostLogDestination = pino.destination({ dest: hostLogPath, sync: false, mkdir: true });
  const logger: Logger = createLogger({ level: 'info', destination: hostLogDestination, base: { service: 'soak-hosts' } });
  const adminToken = randomBytes(32).toString('base64url');
  const joinTokens: string[] = [];
  const violations: string[] = [];
  const fail = (what: string): void => {
    violations.push(what);
    say(`FAIL: ${what}`);
  };

  /** The longest a control-plane start (spawn to serving) took: part of an outage's margin. */
  let cpStartMs = 0;
  const startControlPlane = async (listen: string): Promise<ControlPlaneProcess> => {
    const startedAtMs = performance.now();
    const started = await startControlPlaneProcess(listen);
    cpStartMs = Math.max(cpStartMs, performance.now() - startedAtMs);
    return started;
  };
  const startControlPlaneProcess = (listen: string): Promise<ControlPlaneProcess> =>
    ControlPlaneProcess.start({
      dataDir: join(dir, 'control-plane'),
      adminToken,
      listen,
      env: {
        TETHER_AGENT_TOKEN_TTL: String(agentTtlMs),
        // Same machine, no skew: a small tolerance, so an expired token is refused about when it expires.
        TETHER_CLOCK_TOLERANCE: String(CLOCK_TOLERANCE_MS),
        TETHER_LOST_HOST_GRACE: String(graceMs),
        TETHER_KEEPALIVE: String(CP_KEEPALIVE_MS),
        TETHER_HEARTBEAT_INTERVAL: '5000',
        ...storeEnv,
      },
      nodeArgs: ['--expose-gc', '--import', './scripts/support/memory-probe.mjs'],
      hasIpc: true,
      onLine: (line) => cpLog.write(`${line}\n`),
      boundMs: STEP_BOUND_MS,
    });
  let cp = await startControlPlane('127.0.0.1:0');
  const port = cp.port;
  say(`control plane serving on 127.0.0.1:${port} (pid ${cp.pid}); data and logs in ${dir}${schema === undefined ? '' : `; store: schema ${schema.name} (${schema.shownUrl})`}`);
  const admin = new AdminServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
    interceptors: [bearerInterceptor({ get: () => adminToken })],
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 1_000,
  });

  const agentIds = Array.from({ length: options.agents }, (_, i) => `soak-${String(i).padStart(3, '0')}`);
  /** Created with EnsureAgent, placed by label among all hosts: they move when their host is lost. The others are dispatched to `slotOf`. */
  const ensuredIds = new Set(agentIds.filter((_, i) => isEnsuredIndex(i, options.hosts)));
  const isEnsured = (agentId: string): boolean => ensuredIds.has(agentId);
  const slots: HostSlot[] = [];
  const slotOf = (agentId: string): number => agentIds.indexOf(agentId) % options.hosts;
  // A 401 is excused by the fault schedule only: during a scheduled outage longer than TTL/3 and a third of a TTL after it.
  const ledger = new Ledger(agentIds, (slot, atMs) => slots[slot]?.reach.isExcused(atMs) ?? true, ensuredIds);
  /** Per agent: when a rotation was last applied on its current host (soak time). */
  const lastRotationAtMs = new Map<string, number>();
  /** Hung agents: started on their host, and given their message. */
  const hungStarted = new Set<string>();
  const hungTaken = new Set<string>();
  /** Per agent: when a WhoAmI of its last succeeded (soak time). */
  const lastToolOkAtMs = new Map<string, number>();
  const instances = new Map<string, AgentInstance>();
  /** When each instance started (soak time). */
  const instanceStartedAtMs = new WeakMap<AgentInstance, number>();
  let isShuttingDown = false;
  const crashedHostClosings: Promise<void>[] = [];
  const toolLoops = new Set<Promise<void>>();

  /** The module every soak agent runs, bound to the host (slot and incarnation) that runs it. */
  const soakModule = (slot: number, hostIncarnation: number): AgentModule => (context: AgentContext) => {
    const instance = ledger.onInstanceStart(context.agentId, slot, hostIncarnation);
    instances.set(context.agentId, instance);
    instanceStartedAtMs.set(instance, elapsed());
    context.signal.addEventListener('abort', () => ledger.onInstanceStopped(instance), { once: true });
    const loop = toolCalls(context, instance).catch((err: unknown) => fail(`tool loop of ${context.agentId} threw: ${String(err)}`));
    toolLoops.add(loop);
    loop.then(
      () => toolLoops.delete(loop),
      () => toolLoops.delete(loop),
    );
    return {
      onMessage: (message) => {
        // A crashed host's agents take nothing more: they died with it.
        if (instance.isDead) return Promise.reject(new Error('this agent died with its host'));
        ledger.onReceipt(instance, message.seq, message.payload, elapsed());
        return Promise.resolve();
      },
      close: () => loop,
    };
  };

  /**
   * The hung agent: its onMessage never settles and it ignores its abort
   * signal, as does its close. Only the host's stop deadline gets rid of it.
   */
  const hangModule: AgentModule = (context: AgentContext) => {
    hungStarted.add(context.agentId);
    return {
      onMessage: () => {
        hungTaken.add(context.agentId);
        return new Promise<void>(() => undefined);
      },
      close: () => new Promise<void>(() => undefined),
    };
  };

  /** An agent's own tool calls, every 2–4 s while it lives. */
  const toolCalls = async (context: AgentContext, instance: AgentInstance): Promise<void> => {
    const random = SeededRandom.derived(options.seed, `${context.agentId}/${instance.slot}/${instance.hostIncarnation}`);
    const others = agentIds.filter((id) => id !== context.agentId);
    const isOver = (): boolean => context.signal.aborted || instance.isDead || isShuttingDown;
    for (let round = 0; !isOver(); round++) {
      await context.clock.sleep(random.int(2_000, 4_000), context.signal);
      if (isOver()) return;
      // Each call's start is kept with its end: it was accepted somewhere between (see Ledger.judgeOverlaps).
      let startedAtMs = elapsed();
      try {
        const me = await context.agent.whoAmI({ signal: context.signal });
        if (isOver()) return;
        ledger.onToolCall(instance, 'as-itself', 'ok', elapsed(), '', startedAtMs);
        lastToolOkAtMs.set(context.agentId, elapsed());
        if (me.agentId !== context.agentId) ledger.onWrongIdentity(instance, me.agentId);
        else ledger.onIncarnation(instance, Number(me.incarnation));
      } catch (err) {
        if (isOver()) return;
        ledger.onToolCall(instance, 'as-itself', outcomeOf(err), elapsed(), `(WhoAmI: ${err instanceof Error ? err.message : String(err)})`, startedAtMs);
      }
      startedAtMs = elapsed();
      try {
        await context.agent.heartbeat(context.agentId, { signal: context.signal });
        if (isOver()) return;
        ledger.onToolCall(instance, 'as-itself', 'ok', elapsed(), '', startedAtMs);
      } catch (err) {
        if (isOver()) return;
        ledger.onToolCall(instance, 'as-itself', outcomeOf(err), elapsed(), `(Heartbeat: ${err instanceof Error ? err.message : String(err)})`, startedAtMs);
      }
      if (round % 5 === 4 && others.length > 0) {
        startedAtMs = elapsed();
        try {
          await context.agent.heartbeat(random.pick(others), { signal: context.signal });
          if (isOver()) return;
          ledger.onToolCall(instance, 'as-another', 'ok', elapsed(), '', startedAtMs);
        } catch (err) {
          if (isOver()) return;
          ledger.onToolCall(instance, 'as-another', outcomeOf(err), elapsed(), `(Heartbeat as another: ${err instanceof Error ? err.message : String(err)})`, startedAtMs);
        }
      }
    }
  };

  /** Starts a host for slot `index` (its first, or the one after a crash) through `proxy`. */
  const startHost = (index: number, proxy: FaultProxy, joinToken: string | undefined, incarnation: number): AgentHost => {
    const host = AgentHost.start({
      target: proxy.target,
      clock: new SystemClock(),
      logger: logger.child({ slot: index, incarnation }),
      credentialStore: new FileHostCredentialStore(join(dir, `host-${index}`)),
      ...(joinToken === undefined ? {} : { joinToken }),
      modules: new Map([
        ['soak', soakModule(index, incarnation)],
        ['hang', hangModule],
      ]),
      stopDeadlineMs: STOP_DEADLINE_MS,
      labels: [SOAK_LABEL],
      channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
    });
    // Only the slot's current host speaks for it (a crashed one is let go; its events mean nothing).
    const isCurrent = (): boolean => slots[index]?.host === host;
    host.events.on('connected', () => {
      if (isCurrent()) slots[index]?.reach.setStreamUp(true, elapsed());
    });
    host.events.on('disconnected', () => {
      if (isCurrent()) slots[index]?.reach.setStreamUp(false, elapsed());
    });
    host.events.on('rotation-applied', (e) => {
      if (isCurrent()) lastRotationAtMs.set(e.agentId, elapsed());
    });
    host.events.on('self-fenced', (e) => {
      if (isCurrent()) ledger.onSelfFenced(index, incarnation, e.agentIds, elapsed());
    });
    host.events.on('heartbeat', (e) => {
      if (!isCurrent() || isShuttingDown || e.isOk) return;
      if (e.error instanceof TetherError && outcomeOf(e.error) === 'unauthenticated') ledger.onHostHeartbeatUnauthenticated(index, e.agentId, elapsed());
    });
    return host;
  };

  const allConnected = (): boolean => slots.every((s) => s.host.state === 'connected');
  /** Whether `instance` is alive: not dead with its host, not stopped or fenced by it. */
  const isLive = (instance: AgentInstance | undefined): instance is AgentInstance =>
    instance !== undefined && !instance.isDead && instance.isStopped !== true && instance.isFenced !== true;
  /** Whether `agentId`'s latest instance is alive on `slot`'s current host. */
  const isLiveOn = (agentId: string, slot: HostSlot): boolean => {
    const instance = instances.get(agentId);
    return isLive(instance) && instance.slot === slot.index && instance.hostIncarnation === slot.incarnation;
  };
  /** The dispatched agents, pinned to `index` for good. */
  const pinnedOfSlot = (index: number): string[] => agentIds.filter((id) => !isEnsured(id) && slotOf(id) === index);
  /** The agents alive on `slot`'s current host now (pinned or ensured). */
  const liveOnSlot = (slot: HostSlot): string[] => agentIds.filter((id) => isLiveOn(id, slot));
  /** Whether every one of `agentIds` runs on `slot`'s current host. */
  const allLiveOn = (slot: HostSlot, ids: readonly string[]): boolean => ids.every((id) => isLiveOn(id, slot));
  /**
   * Whether every one of `agentIds` has an instance started after `sinceInstances` (its instance then), alive on a
   * connected host other than `awayFrom` (any host, with `awayFrom` undefined).
   */
  const hasMoved = (ids: readonly string[], sinceInstances: ReadonlyMap<string, AgentInstance | undefined>, awayFrom: HostSlot | undefined): boolean =>
    ids.every((id) => {
      const instance = instances.get(id);
      if (!isLive(instance) || instance === sinceInstances.get(id)) return false;
      const slot = slots[instance.slot];
      return slot !== undefined && slot !== awayFrom && slot.host.state === 'connected' && instance.hostIncarnation === slot.incarnation;
    });

  // Hosts and agents.
  for (let index = 0; index < options.hosts; index++) {
    const enrolled = await unary(admin.enrollHost.bind(admin), { name: `soak-host-${index}`, joinTtlMs: 0 }, CALL_BOUND_MS);
    joinTokens.push(enrolled.joinToken);
    mkdirSync(join(dir, `host-${index}`), { recursive: true, mode: 0o700 });
    const proxy = await FaultProxy.start({ targetPort: port });
    slots.push({
      index,
      dataDir: join(dir, `host-${index}`),
      reach: new Reachability(agentTtlMs, agentTtlMs / 3, elapsed()),
      hostId: enrolled.hostId,
      proxy,
      host: startHost(index, proxy, enrolled.joinToken, 1),
      incarnation: 1,
    });
  }
  await waitFor(allConnected, 'every host to connect', STEP_BOUND_MS);
  for (const agentId of agentIds) {
    const spec = { kind: 'module', module: 'soak', command: '', args: [], config: '' };
    if (isEnsured(agentId)) {
      await unary(admin.ensureAgent.bind(admin), { agentId, name: agentId, spec, hostId: '', hostLabels: [SOAK_LABEL], update: false }, CALL_BOUND_MS);
      continue;
    }
    const slot = slots[slotOf(agentId)] as HostSlot;
    await unary(admin.dispatchAgent.bind(admin), { agentId, name: agentId, hostId: slot.hostId, hostLabels: [], spec }, CALL_BOUND_MS);
  }
  await waitFor(() => agentIds.every((id) => slots.some((slot) => isLiveOn(id, slot))) && slots.every((slot) => allLiveOn(slot, pinnedOfSlot(slot.index))), 'every agent to start', STEP_BOUND_MS);
  say(
    `${options.hosts} hosts connected, ${options.agents} agents running (${ensuredIds.size} ensured, placed by label: ` +
      `${slots.map((slot) => `host ${slot.index} ${liveOnSlot(slot).filter(isEnsured).length}`).join(', ')}; the others dispatched to a host)`,
  );

  const load = new Load(admin, ledger, agentIds, options.rate, loadRandom);
  load.start(Math.min(6, options.agents));

  // Faults.
  const faultCounts = new Map<FaultKind, number>();
  let longestBlackholeMs = 0;
  let longestCpDowntimeMs = 0;
  const rotations = { ok: 0, notConnected: 0, other: 0 };
  const outages: OutageRecord[] = [];
  const hungAgents: HungRecord[] = [];
  const longPartitions: {
    slot: number;
    ms: number;
    healToConnectedMs: number;
    healToRotatedMs: number;
    moved: number;
    noticedAfterMs: number;
    /** The bound for its ensured agents to run elsewhere fell before the heal (so they had to, on another host). */
    isMovedOff: boolean;
    cutToMovedMs: number;
  }[] = [];
  const setControlPlaneDown = (isDown: boolean): void => {
    for (const slot of slots) slot.reach.setControlPlaneDown(isDown, elapsed());
  };
  const lowestLeftMs = (): number => Math.min(...slots.map((s) => s.host.lowestTimeToExpiryMs()));
  // The lowest time-to-expiry the rotation schedule has let it fall to so far (sampled): where an outage can start at best.
  let lowestSeenMs = Infinity;
  const sampler = (async (): Promise<void> => {
    while (!isShuttingDown) {
      lowestSeenMs = Math.min(lowestSeenMs, lowestLeftMs());
      await pause(250);
    }
  })();
  /** The next `event` of `slot`'s current host that `matches`, bounded; the listener is removed either way. */
  const nextAgentStopped = (host: AgentHost, agentId: string, boundMs: number): Promise<{ outcome: string; atMs: number }> => {
    let listener: ((e: { agentId: string; outcome: string }) => void) | undefined;
    const seen = new Promise<{ outcome: string; atMs: number }>((resolve) => {
      listener = (e) => {
        if (e.agentId === agentId) resolve({ outcome: e.outcome, atMs: performance.now() });
      };
      host.events.on('agent-stopped', listener);
    });
    return within(seen, `host to report ${agentId} stopped`, boundMs).finally(() => {
      if (listener !== undefined) host.events.off('agent-stopped', listener);
    });
  };

  /** The slot with the most ensured agents alive on it (ties: the schedule's pick), so that a loss of it moves something. */
  const slotWithMostEnsured = (): HostSlot => {
    const ensuredOn = (slot: HostSlot): number => liveOnSlot(slot).filter(isEnsured).length;
    const most = Math.max(...slots.map(ensuredOn));
    return faults.pick(slots.filter((slot) => ensuredOn(slot) === most));
  };

  /**
   * Kills `slot`'s host as a process death would: in one synchronous step every
   * agent of it dies and its links are reset. Returns the agents alive on it.
   */
  const killHost = (slot: HostSlot): string[] => {
    const wereThere = liveOnSlot(slot);
    for (const id of agentIds) {
      for (const instance of ledger.instancesOf(id)) if (instance.slot === slot.index && instance.hostIncarnation === slot.incarnation) instance.isDead = true;
    }
    slot.reach.setStreamUp(false, elapsed());
    const oldHost = slot.host;
    // The object itself is let go: its links are gone, so nothing it does any more reaches the control plane.
    crashedHostClosings.push(slot.proxy.close().then(() => oldHost.close()));
    return wereThere;
  };
  /** A new host for `slot` from the same data directory, behind `proxy` (started before the old one closed, so it cannot get its port). */
  const reviveHost = (slot: HostSlot, proxy: FaultProxy): void => {
    slot.incarnation++;
    slot.proxy = proxy;
    slot.host = startHost(slot.index, proxy, undefined, slot.incarnation);
  };

  const crashHost = async (slot: HostSlot): Promise<void> => {
    const newProxy = await FaultProxy.start({ targetPort: port });
    const wereThere = killHost(slot);
    reviveHost(slot, newProxy);
    // Back within the grace: every agent it had (pinned or ensured) starts again there.
    await waitFor(() => slot.host.state === 'connected' && allLiveOn(slot, wereThere), `host ${slot.index} to come back with its agents`, STEP_BOUND_MS);
  };

  /** Whether the control plane lists `hostId` as connected. */
  const isListedConnected = async (hostId: string): Promise<boolean> => {
    for (let pageToken = '', page = 0; page < 100; page++) {
      const listed = await unary(admin.listHosts.bind(admin), { pageSize: 100, pageToken }, CALL_BOUND_MS);
      const host = listed.hosts.find((h) => h.hostId === hostId);
      if (host !== undefined) return host.connected;
      if (listed.nextPageToken === '') return false;
      pageToken = listed.nextPageToken;
    }
    return false;
  };
  /** The latest expiry of a token the control plane issued to any of `agentIds` (epoch ms; 0 for none). */
  const latestExpiryMs = async (ids: readonly string[]): Promise<number> => {
    let latest = 0;
    for (const agentId of ids) {
      const got = await unary(admin.getAgent.bind(admin), { agentId }, CALL_BOUND_MS);
      latest = Math.max(latest, got.agent?.expiresAtMs ?? 0);
    }
    return latest;
  };
  /**
   * How long after a host's last contact its ensured agents can take to run
   * elsewhere: the control plane declares it lost after the grace (and its
   * sweep), and places each agent once the last token of its old incarnation
   * has expired, plus the tolerance; then the placement and start (a margin).
   */
  const moveBoundMs = (lastContactAtEpochMs: number, latestExpiryAtEpochMs: number): number =>
    Math.max(lastContactAtEpochMs + graceMs + lostSweepMs, latestExpiryAtEpochMs + CLOCK_TOLERANCE_MS) + MOVE_MARGIN_MS - Date.now();
  /**
   * What a host death of `slot` would take: the agents to move, and the room it needs in the phase:
   * when the control plane places them, and the return (the margin of the bound is for a slow start, a
   * failure bound; a phase overrun by a slow one only makes the run longer).
   */
  const planHostDeath = async (): Promise<{ slot: HostSlot; needMs: number }> => {
    const slot = slotWithMostEnsured();
    const needMs = moveBoundMs(Date.now(), await latestExpiryMs(liveOnSlot(slot).filter(isEnsured))) - MOVE_MARGIN_MS + RETURN_ESTIMATE_MS;
    return { slot, needMs };
  };
  const hostDeaths: { slot: number; moved: number; deathToRunningElsewhereMs: number; boundMs: number; returnMs: number; staleStarts: number }[] = [];
  const hostDeathSkips: string[] = [];

  /**
   * HOST DEATH: `slot`'s host dies and stays dead past the lost-host grace.
   * Its ensured agents must start on other hosts (bounded: see
   * {@link moveBoundMs}) and receive every message confirmed before the death
   * (in order: the ledger checks order everywhere). Then the host comes back
   * from its data directory: its pinned agents start again there, and no copy
   * of a moved agent may run there (one that starts must be stopped, never
   * having taken a message or made a successful call).
   */
  const hostDeath = async (slot: HostSlot): Promise<void> => {
    const diedAtMs = elapsed();
    const diedAtEpochMs = Date.now();
    const confirmedAtDeath = new Map(agentIds.map((id) => [id, ledger.confirmed(id)]));
    const wereThere = killHost(slot);
    const movers = wereThere.filter(isEnsured);
    const before = new Map(movers.map((id) => [id, instances.get(id)]));
    say(`fault: host ${slot.index} dies (incarnation ${slot.incarnation}) and stays dead past the lost-host grace (${graceMs / 1000} s); ${movers.length} ensured agents must move: ${movers.join(', ') || 'none'}`);
    // Once the control plane has seen it go, no token can be issued to its agents: their latest expiry is final.
    await waitFor(async () => !(await isListedConnected(slot.hostId)), `the control plane to see host ${slot.index} gone`, STEP_BOUND_MS);
    const boundMs = Math.max(MOVE_MARGIN_MS, moveBoundMs(diedAtEpochMs, await latestExpiryMs(movers)));
    const isMoved = (): boolean =>
      hasMoved(movers, before, slot) && movers.every((id) => ledger.isDeliveredUpTo(id, confirmedAtDeath.get(id) ?? 0));
    let movedAfterMs = Number.NaN;
    try {
      await waitFor(isMoved, `the ensured agents of dead host ${slot.index} to run elsewhere with their mail`, boundMs);
      movedAfterMs = elapsed() - diedAtMs;
      say(
        `  its ensured agents run elsewhere ${(movedAfterMs / 1000).toFixed(1)} s after the death (bound ${(boundMs / 1000).toFixed(1)} s from then): ` +
          `${movers.map((id) => `${id} → host ${instances.get(id)?.slot ?? '?'}`).join(', ') || 'none to move'}`,
      );
    } catch (err) {
      fail(err instanceof Error ? err.message : String(err));
    }
    // Back from its data directory.
    const returnedAtMs = elapsed();
    reviveHost(slot, await FaultProxy.start({ targetPort: port }));
    const pinned = wereThere.filter((id) => !isEnsured(id));
    await waitFor(() => slot.host.state === 'connected' && allLiveOn(slot, pinned), `host ${slot.index} to come back with its pinned agents`, STEP_BOUND_MS);
    const returnMs = elapsed() - returnedAtMs;
    // No copy of a moved agent may run on the returned host: one that started is stopped at once, having done nothing.
    const stale = movers.flatMap((id) => ledger.instancesOf(id).filter((i) => i.slot === slot.index && i.hostIncarnation === slot.incarnation));
    try {
      await waitFor(() => stale.every((i) => i.isStopped === true), `stale copies on returned host ${slot.index} to be stopped`, STOP_DEADLINE_MS + 10_000);
    } catch (err) {
      fail(err instanceof Error ? err.message : String(err));
    }
    for (const copy of stale) {
      if (!Number.isNaN(copy.firstReceiptAtMs)) fail(`a stale copy of ${copy.agentId} on returned host ${slot.index} took a message`);
      if (Number.isFinite(copy.okFromMs)) fail(`a stale copy of ${copy.agentId} on returned host ${slot.index} made a successful call`);
    }
    hostDeaths.push({ slot: slot.index, moved: movers.length, deathToRunningElsewhereMs: movedAfterMs, boundMs, returnMs, staleStarts: stale.length });
    say(`  host ${slot.index} back as incarnation ${slot.incarnation} ${returnMs} ms after its return began, its ${pinned.length} pinned agents started again; stale copies started there: ${stale.length}`);
  };

  const drains: { slot: number; moved: number; drainToMovedMs: number; outcomes: string }[] = [];
  /**
   * DRAIN (issue 15): `slot`'s host is drained under load (AdminService.DrainHost), its ensured agents
   * must run elsewhere (bounded), its dispatched ones stay (the drain reports them so), and a drain
   * hands over from the acknowledged seq: nothing its agents took comes again (the ledger counts any
   * redelivery after it as a duplicate). Then UncordonHost.
   */
  const drainHost = async (slot: HostSlot): Promise<void> => {
    const movers = liveOnSlot(slot).filter(isEnsured);
    const before = new Map(movers.map((id) => [id, instances.get(id)]));
    for (const id of movers) ledger.onDrainStarted(id);
    say(`fault: drain host ${slot.index} under load; its ${movers.length} ensured agents must move (${movers.join(', ') || 'none'}), nothing taken twice; then uncordon it`);
    const drainedAtMs = elapsed();
    let movedAfterMs = Number.NaN;
    let outcomes = '';
    try {
      // Asked again while it runs (a call answers when the drain changes or settles, or after wait_ms).
      await waitFor(
        async () => {
          const drained = await unary(admin.drainHost.bind(admin), { hostId: slot.hostId, waitMs: 2_000, watch: false }, CALL_BOUND_MS);
          const counts = new Map<string, number>();
          for (const agent of drained.agents) counts.set(agent.outcome, (counts.get(agent.outcome) ?? 0) + 1);
          outcomes = [...counts].map(([k, v]) => `${k}×${v}`).join(', ');
          return drained.settled && hasMoved(movers, before, slot);
        },
        `the drain of host ${slot.index} to settle with its ensured agents running elsewhere`,
        STEP_BOUND_MS,
      );
      movedAfterMs = elapsed() - drainedAtMs;
    } catch (err) {
      fail(err instanceof Error ? err.message : String(err));
    } finally {
      for (const id of movers) ledger.onDrainEnded(id);
      await unary(admin.uncordonHost.bind(admin), { hostId: slot.hostId }, CALL_BOUND_MS);
    }
    const pinnedGone = pinnedOfSlot(slot.index).filter((id) => !isLiveOn(id, slot));
    if (pinnedGone.length > 0) fail(`drain of host ${slot.index}: its dispatched agents ${pinnedGone.join(', ')} no longer run there`);
    drains.push({ slot: slot.index, moved: movers.length, drainToMovedMs: movedAfterMs, outcomes });
    say(
      `  host ${slot.index} drained in ${(movedAfterMs / 1000).toFixed(1)} s (${outcomes}): ${movers.map((id) => `${id} → host ${instances.get(id)?.slot ?? '?'}`).join(', ') || 'nothing to move'}; uncordoned`,
    );
  };

  /** `plannedDeath`: the slot a host death was planned for (see planHostDeath). */
  const runFault = async (kind: FaultKind, plannedDeath?: HostSlot): Promise<void> => {
    faultCounts.set(kind, (faultCounts.get(kind) ?? 0) + 1);
    switch (kind) {
      case 'cp-restart': {
        say('fault: SIGKILL the control plane, restart it on the same port and data directory');
        const downAtMs = performance.now();
        cp.crash();
        const exit = await within(cp.exited, 'the killed control plane to exit', STEP_BOUND_MS);
        if (exit.signal !== 'SIGKILL') fail(`the control plane exited with ${JSON.stringify(exit)} instead of being killed`);
        setControlPlaneDown(true);
        cp = await startControlPlane(`127.0.0.1:${port}`);
        setControlPlaneDown(false);
        await waitFor(allConnected, 'every host back after the restart', STEP_BOUND_MS);
        longestCpDowntimeMs = Math.max(longestCpDowntimeMs, performance.now() - downAtMs);
        say(`  control plane back (pid ${cp.pid}); every host reconnected ${Math.round(performance.now() - downAtMs)} ms after the kill`);
        return;
      }
      case 'cp-outage': {
        // Kill to listening again stays below TTL/3 by a margin and the time a start takes.
        const thirdMs = agentTtlMs / 3;
        const maxDownMs = Math.floor(thirdMs - OUTAGE_MARGIN_MS - cpStartMs);
        if (maxDownMs < 2_000) {
          say(`fault: control-plane outage skipped: TTL/3 (${(thirdMs / 1000).toFixed(1)} s) leaves no room past the margin and a ${Math.round(cpStartMs)} ms start`);
          return;
        }
        const targetDownMs = faults.int(Math.floor(maxDownMs * 0.7), maxDownMs);
        // Right before rotations fall due: the lowest time-to-expiry within a band above 40 % of the TTL (bounded: one rotation cycle).
        // At best 40 % of the TTL, or the lowest the schedule has let it fall to so far if that is higher.
        const dueMs = Math.max(agentTtlMs * ROTATION_LEFT_FRACTION, Number.isFinite(lowestSeenMs) ? lowestSeenMs : 0);
        const bandMs = Math.max(1_000, agentTtlMs * 0.05);
        const waitedFromMs = performance.now();
        let closestMs = Infinity;
        await waitFor(
          () => {
            const left = lowestLeftMs();
            if (Math.abs(left - dueMs) < Math.abs(closestMs - dueMs)) closestMs = left;
            return left <= dueMs + bandMs || performance.now() - waitedFromMs > agentTtlMs * (1 - ROTATION_LEFT_FRACTION) + 2_000;
          },
          'the lowest time-to-expiry to near its minimum',
          STEP_BOUND_MS,
        );
        const lowestAtKillMs = lowestLeftMs();
        say(
          `fault: control-plane outage of ${(targetDownMs / 1000).toFixed(1)} s (TTL/3 is ${(thirdMs / 1000).toFixed(1)} s), ` +
            `lowest time-to-expiry ${(lowestAtKillMs / 1000).toFixed(1)} s (${((lowestAtKillMs / agentTtlMs) * 100).toFixed(0)} % of the TTL; aimed at ≤ ${((dueMs + bandMs) / 1000).toFixed(1)} s, ` +
            `the lowest seen so far ${(lowestSeenMs / 1000).toFixed(1)} s; waited ${Math.round(performance.now() - waitedFromMs)} ms)`,
        );
        const helloAtMs: (number | undefined)[] = slots.map(() => undefined);
        const attempts = slots.map(() => 0);
        const longestRetryMs = slots.map(() => 0);
        let listeningAtMs = Infinity;
        const unlisten = slots.map((slot) => {
          const host = slot.host;
          const onConnected = (): void => {
            if (performance.now() >= listeningAtMs && helloAtMs[slot.index] === undefined) helloAtMs[slot.index] = performance.now();
          };
          const onDisconnected = (e: { retryInMs: number }): void => {
            if (listeningAtMs !== Infinity) return;
            attempts[slot.index] = (attempts[slot.index] ?? 0) + 1;
            longestRetryMs[slot.index] = Math.max(longestRetryMs[slot.index] ?? 0, e.retryInMs);
          };
          host.events.on('connected', onConnected);
          host.events.on('disconnected', onDisconnected);
          return (): void => {
            host.events.off('connected', onConnected);
            host.events.off('disconnected', onDisconnected);
          };
        });
        try {
          const downAtMs = performance.now();
          cp.crash();
          const exit = await within(cp.exited, 'the killed control plane to exit', STEP_BOUND_MS);
          if (exit.signal !== 'SIGKILL') fail(`the control plane exited with ${JSON.stringify(exit)} instead of being killed`);
          setControlPlaneDown(true);
          // Held down so that, with the start it takes, it listens again about `targetDownMs` after the kill.
          await pause(Math.max(0, targetDownMs - (performance.now() - downAtMs) - cpStartMs));
          cp = await startControlPlane(`127.0.0.1:${port}`);
          listeningAtMs = performance.now();
          setControlPlaneDown(false);
          const downMs = listeningAtMs - downAtMs;
          await waitFor(() => helloAtMs.every((at) => at !== undefined) && allConnected(), 'every host to say Hello after the outage', STEP_BOUND_MS);
          const helloAfterListenMs = helloAtMs.map((at) => Math.round((at ?? listeningAtMs) - listeningAtMs));
          outages.push({ downMs, lowestLeftAtKillMs: lowestAtKillMs, helloAfterListenMs, attempts, longestRetryMs });
          say(
            `  control plane listening again after ${(downMs / 1000).toFixed(1)} s (${((downMs / thirdMs) * 100).toFixed(0)} % of TTL/3); ` +
              `Hello after listening: ${helloAfterListenMs.map((ms, i) => `host ${i} +${ms} ms (${attempts[i] ?? 0} attempts while down, longest retry ${longestRetryMs[i] ?? 0} ms)`).join(', ')}`,
          );
        } finally {
          for (const off of unlisten) off();
        }
        return;
      }
      case 'long-partition': {
        const slot = slotWithMostEnsured();
        const ms = faults.int(Math.floor(agentTtlMs * LONG_PARTITION_TTLS[0]), Math.floor(agentTtlMs * LONG_PARTITION_TTLS[1]));
        // Past the grace: the host fences itself, and its ensured agents move to another host.
        const movers = liveOnSlot(slot).filter(isEnsured);
        const before = new Map(movers.map((id) => [id, instances.get(id)]));
        say(
          `fault: long partition: blackhole host ${slot.index} for ${(ms / 1000).toFixed(1)} s (the TTL is ${agentTtlMs / 1000} s, the lost-host grace ${graceMs / 1000} s): ` +
            `its 401s excused from TTL/3 in until TTL/3 after it heals; it must fence itself, and its ${movers.length} ensured agents move`,
        );
        const cutAtMs = elapsed();
        slot.proxy.blackhole();
        slot.reach.setBlackholed(true, elapsed());
        // The control plane notices the silent stream by its keepalive, and counts the grace from then. From
        // then no token can be issued to the host's agents: their latest expiry is final, and so is the bound
        // (soak time) by which they must run on another host.
        let noticedAfterMs = Number.NaN;
        let deadlineMs = Number.NaN;
        const noticing = (async (): Promise<void> => {
          for (let n = 0; n < 10_000 && elapsed() - cutAtMs < ms; n++) {
            if (!(await isListedConnected(slot.hostId))) {
              noticedAfterMs = elapsed() - cutAtMs;
              deadlineMs = elapsed() + moveBoundMs(Date.now(), await latestExpiryMs(movers));
              return;
            }
            await pause(500);
          }
        })();
        // When its ensured agents run on another host, as it happens.
        let movedAfterMs = Number.NaN;
        const watching = waitFor(
          () => {
            if (Number.isNaN(movedAfterMs) && hasMoved(movers, before, slot)) movedAfterMs = elapsed() - cutAtMs;
            return !Number.isNaN(movedAfterMs) || elapsed() - cutAtMs >= ms;
          },
          'the partition to end',
          ms + STEP_BOUND_MS,
        );
        await pause(ms);
        await within(noticing, 'the control plane to notice the partition', STEP_BOUND_MS);
        await watching;
        slot.proxy.heal();
        slot.reach.setBlackholed(false, elapsed());
        const healedAtMs = elapsed();
        const hadToMoveOff = !Number.isNaN(deadlineMs) && deadlineMs <= healedAtMs;
        if (hadToMoveOff && (Number.isNaN(movedAfterMs) || cutAtMs + movedAfterMs > deadlineMs)) {
          fail(
            `the ensured agents of partitioned host ${slot.index} did not run on another host within ${((deadlineMs - cutAtMs) / 1000).toFixed(1)} s of the cut ` +
              `(the control plane saw it gone ${(noticedAfterMs / 1000).toFixed(1)} s after it; ${movers.filter((id) => !hasMoved([id], before, slot)).join(', ')} had not moved at the heal)`,
          );
        }
        // Back: connected, and every pinned agent of it given a token after the heal.
        await waitFor(() => slot.host.state === 'connected', `host ${slot.index} to be connected after the long partition`, STEP_BOUND_MS);
        const connectedAfterMs = elapsed() - healedAtMs;
        const isRotated = (): boolean => pinnedOfSlot(slot.index).every((id) => (lastRotationAtMs.get(id) ?? -1) >= healedAtMs);
        try {
          await waitFor(isRotated, `every agent of host ${slot.index} to be rotated after the long partition`, agentTtlMs);
        } catch (err) {
          fail(err instanceof Error ? err.message : String(err));
        }
        const rotatedAfterMs = elapsed() - healedAtMs;
        let ranAgainAfterMs = movedAfterMs;
        if (!hadToMoveOff) {
          // Healed before the bound: they may run on another host or on this one again, by the bound or soon after the heal.
          const boundMs = Math.max(0, (Number.isNaN(deadlineMs) ? 0 : deadlineMs) - elapsed()) + MOVE_MARGIN_MS;
          try {
            await waitFor(() => hasMoved(movers, before, undefined), `the ensured agents of partitioned host ${slot.index} to run again after the heal`, boundMs);
            ranAgainAfterMs = elapsed() - cutAtMs;
          } catch (err) {
            fail(err instanceof Error ? err.message : String(err));
          }
        }
        const wentTo = movers.map((id) => `${id} → host ${instances.get(id)?.slot ?? '?'}`).join(', ');
        longPartitions.push({
          slot: slot.index,
          ms,
          healToConnectedMs: connectedAfterMs,
          healToRotatedMs: rotatedAfterMs,
          moved: movers.length,
          noticedAfterMs,
          isMovedOff: hadToMoveOff,
          cutToMovedMs: ranAgainAfterMs,
        });
        say(
          `  host ${slot.index} healed: connected ${connectedAfterMs} ms and every pinned agent rotated ${rotatedAfterMs} ms after the heal; the control plane saw it gone ` +
            `${(noticedAfterMs / 1000).toFixed(1)} s after the cut; its ensured agents ran ${hadToMoveOff ? 'on other hosts' : 'again (healed before they had to move)'} ` +
            `${(ranAgainAfterMs / 1000).toFixed(1)} s after the cut (${wentTo || 'none'})`,
        );
        return;
      }
      case 'hung-agent': {
        const slot = faults.pick(slots);
        const host = slot.host;
        const agentId = `soak-hung-${String(hungAgents.length).padStart(3, '0')}`;
        const neighbours = liveOnSlot(slot);
        say(`fault: hung agent ${agentId} on host ${slot.index}: it never settles a message and ignores its signal; stopped (deadline ${STOP_DEADLINE_MS / 1000} s)`);
        await unary(
          admin.dispatchAgent.bind(admin),
          { agentId, name: agentId, hostId: slot.hostId, hostLabels: [], spec: { kind: 'module', module: 'hang', command: '', args: [], config: '' } },
          CALL_BOUND_MS,
        );
        await waitFor(() => hungStarted.has(agentId), `${agentId} to start`, STEP_BOUND_MS);
        await unary(
          admin.sendMessages.bind(admin),
          { agentId, messages: [{ contentType: 'text/plain', payload: Buffer.from('hang'), idempotencyKey: `${agentId}/0` }] },
          CALL_BOUND_MS,
        );
        await waitFor(() => hungTaken.has(agentId), `${agentId} to be given its message`, STEP_BOUND_MS);
        // While it is being stopped, its neighbours take messages and a forced rotation.
        let neighbourMessages = 0;
        let neighbourRotations = 0;
        const onTaken = (e: { agentId: string }): void => {
          if (neighbours.includes(e.agentId)) neighbourMessages++;
        };
        const onRotated = (e: { agentId: string }): void => {
          if (neighbours.includes(e.agentId)) neighbourRotations++;
        };
        host.events.on('message-taken', onTaken);
        host.events.on('rotation-applied', onRotated);
        try {
          const stopped = nextAgentStopped(host, agentId, STOP_DEADLINE_MS + STEP_BOUND_MS);
          const stopAtMs = performance.now();
          await unary(admin.stopAgent.bind(admin), { agentId, reason: 'soak: a hung agent is stopped' }, CALL_BOUND_MS);
          const neighbour = faults.pick(neighbours);
          await unary(admin.rotateAgentCredential.bind(admin), { agentId: neighbour }, CALL_BOUND_MS);
          const report = await stopped;
          const record: HungRecord = { agentId, slot: slot.index, stopToReportMs: Math.round(report.atMs - stopAtMs), outcome: report.outcome, neighbourMessages, neighbourRotations };
          hungAgents.push(record);
          say(
            `  ${agentId} reported ${record.outcome} ${record.stopToReportMs} ms after StopAgent; meanwhile its neighbours took ${neighbourMessages} messages and applied ${neighbourRotations} rotations`,
          );
          if (record.outcome !== 'abandoned') fail(`hung agent ${agentId} was reported ${record.outcome}, not abandoned`);
          if (neighbourRotations === 0) fail(`no neighbour of hung agent ${agentId} applied a rotation while it was being stopped (a forced one was asked for)`);
          if (neighbourMessages === 0) fail(`no neighbour of hung agent ${agentId} took a message while it was being stopped`);
          // The control plane marks it stopped when asked (its detail is the stop's reason, whatever the host reports after).
          const got = await unary(admin.getAgent.bind(admin), { agentId }, CALL_BOUND_MS);
          if (got.agent?.state !== AgentState.AGENT_STATE_STOPPED) fail(`the control plane shows hung agent ${agentId} in state ${String(got.agent?.state)}, not stopped`);
        } finally {
          host.events.off('message-taken', onTaken);
          host.events.off('rotation-applied', onRotated);
        }
        return;
      }
      case 'host-death': {
        await hostDeath(plannedDeath ?? slotWithMostEnsured());
        return;
      }
      case 'drain': {
        await drainHost(slotWithMostEnsured());
        return;
      }
      case 'host-crash': {
        const slot = faults.pick(slots);
        say(`fault: crash host ${slot.index} (incarnation ${slot.incarnation}); start a new one from its data directory`);
        await crashHost(slot);
        say(`  host ${slot.index} back as incarnation ${slot.incarnation}, its agents started again`);
        return;
      }
      case 'cut': {
        const slot = faults.pick(slots);
        say(`fault: cut host ${slot.index}'s connections`);
        slot.proxy.cutAll();
        await waitFor(() => slot.host.state === 'connected' && slot.proxy.openConnections > 0, `host ${slot.index} to reconnect after the cut`, STEP_BOUND_MS);
        return;
      }
      case 'blackhole': {
        const slot = faults.pick(slots);
        const ms = faults.int(2_000, Math.floor(agentTtlMs / 3) - 3_000);
        say(`fault: blackhole host ${slot.index} for ${(ms / 1000).toFixed(1)} s (a third of the TTL is ${(agentTtlMs / 3000).toFixed(1)} s)`);
        slot.proxy.blackhole();
        slot.reach.setBlackholed(true, elapsed());
        await pause(ms);
        slot.proxy.heal();
        slot.reach.setBlackholed(false, elapsed());
        longestBlackholeMs = Math.max(longestBlackholeMs, ms);
        await waitFor(() => slot.host.state === 'connected', `host ${slot.index} to be connected after the blackhole`, STEP_BOUND_MS);
        return;
      }
      case 'key-rotation': {
        try {
          const rotated = await unary(admin.rotateSigningKey.bind(admin), {}, CALL_BOUND_MS);
          say(`fault: signing key rotated (the standby ${rotated.keyId} signs; the old one verifies until its tokens expire)`);
        } catch (err) {
          // The standby is promoted only once it has been in the JWKS longer than its cache lifetime (60 s).
          if (codeOf(err) !== grpc.status.FAILED_PRECONDITION) throw err;
          say('fault: signing key rotation refused: the standby has not been published long enough yet');
        }
        return;
      }
      case 'rotate-all': {
        say(`fault: force a rotation of all ${agentIds.length} agents`);
        await Promise.all(
          agentIds.map(async (agentId) => {
            try {
              await unary(admin.rotateAgentCredential.bind(admin), { agentId }, CALL_BOUND_MS);
              rotations.ok++;
            } catch (err) {
              if (codeOf(err) === grpc.status.FAILED_PRECONDITION) rotations.notConnected++;
              else rotations.other++;
            }
          }),
        );
        return;
      }
    }
  };

  /**
   * Faults at seeded random moments until `untilMs`; then any kind of `kinds`
   * not yet seen in this run, so a short run covers them all. A long partition
   * (more than a TTL, then the host's way back) runs only where the phase has
   * room for it: first thing, and again only while that much time is left.
   */
  const longPartitionNeedsMs = agentTtlMs * (LONG_PARTITION_TTLS[1] + 1) + 10_000;
  const longPartitionSkips: string[] = [];
  const chaos = async (kinds: readonly FaultKind[], untilMs: number, phase: string): Promise<void> => {
    const hasLongRoom = (): boolean => untilMs - elapsed() >= longPartitionNeedsMs;
    /** A host death where the phase has room for it (what it needs depends on its agents' token expiries: asked now). */
    const maybeHostDeath = async (isFirst: boolean): Promise<void> => {
      const plan = await planHostDeath();
      const leftMs = untilMs - elapsed();
      if (leftMs >= plan.needMs) await runFault('host-death', plan.slot);
      else if (isFirst) hostDeathSkips.push(`${phase} (${Math.round(leftMs / 1000)} s, needs ${Math.round(plan.needMs / 1000)} s)`);
    };
    if (kinds.includes('long-partition')) {
      if (hasLongRoom()) await runFault('long-partition');
      else longPartitionSkips.push(`${phase} (${Math.round((untilMs - elapsed()) / 1000)} s, needs ${longPartitionNeedsMs / 1000} s)`);
    }
    if (kinds.includes('host-death')) await maybeHostDeath(true);
    const shortKinds = kinds.filter((kind) => !LONG_FAULTS.includes(kind));
    let deck: FaultKind[] = [];
    for (let n = 0; n < 10_000; n++) {
      const gapMs = faults.int(2_000, 8_000);
      if (elapsed() + gapMs >= untilMs) break;
      await pause(gapMs);
      if (deck.length === 0) deck = faults.shuffled(kinds);
      const kind = deck.shift() as FaultKind;
      if (kind === 'long-partition' && !hasLongRoom()) continue;
      if (kind === 'host-death') await maybeHostDeath(false);
      else await runFault(kind);
    }
    for (const kind of shortKinds) if ((faultCounts.get(kind) ?? 0) === 0) await runFault(kind);
  };

  let measureId = 0;
  const quietPoints: QuietPoint[] = [];
  const quietPoint = async (name: string): Promise<void> => {
    await load.pause();
    await waitFor(allConnected, `${name}: every host connected`, STEP_BOUND_MS);
    const quietFromMs = elapsed();
    try {
      // Every agent's own calls go through again, so their channels are back before descriptors are counted.
      await waitFor(() => agentIds.every((id) => (lastToolOkAtMs.get(id) ?? -1) >= quietFromMs), `${name}: a tool call of every agent to succeed`, STEP_BOUND_MS);
      await waitFor(() => ledger.isAllDelivered(), `${name}: every message sent delivered`, STEP_BOUND_MS);
      await waitFor(
        async () => {
          for (const agentId of agentIds) {
            const pending = await unary(admin.listMessages.bind(admin), { agentId, state: 'pending', pageSize: 1, pageToken: '' }, CALL_BOUND_MS);
            if (pending.messages.length > 0) return false;
          }
          return true;
        },
        `${name}: every outbox acknowledged`,
        STEP_BOUND_MS,
      );
    } catch (err) {
      fail(err instanceof Error ? err.message : String(err));
    }
    const snapshot = (which: string): string | undefined => (options.isSnapshotting ? join(dir, `${name}-${which}.heapsnapshot`) : undefined);
    const point: QuietPoint = { name, atMs: elapsed(), soak: measureSelf(snapshot('soak')), controlPlane: await measureChild(cp, ++measureId, snapshot('control-plane')) };
    quietPoints.push(point);
    say(
      `quiet point ${name}: soak heap ${mib(point.soak.heapUsedBytes)}, RSS ${mib(point.soak.rssBytes)}, ${point.soak.openFds} fds; ` +
        `control plane (pid ${point.controlPlane.pid}) heap ${mib(point.controlPlane.heapUsedBytes)}, RSS ${mib(point.controlPlane.rssBytes)}, ${point.controlPlane.openFds} fds`,
    );
    load.resume();
  };

  await pause(warmupMs);
  await quietPoint('start');
  await chaos(ALL_FAULTS, elapsed() + phase1Ms, 'first phase');
  await quietPoint('mid');
  await chaos(
    ALL_FAULTS.filter((kind) => !CONTROL_PLANE_FAULTS.includes(kind)),
    elapsed() + phase2Ms,
    'second phase',
  );
  await quietPoint('end');
  await load.stop();

  // Every ensured agent runs somewhere at the end: `running` on a connected host, by the control plane's
  // word, and the soak sees exactly one live instance of it, on that host's current incarnation.
  const ensuredProblems: string[] = [];
  for (const agentId of ensuredIds) {
    const got = await unary(admin.getAgent.bind(admin), { agentId }, CALL_BOUND_MS);
    const slot = slots.find((s) => s.hostId === got.agent?.hostId);
    const live = ledger.instancesOf(agentId).filter(isLive);
    if (got.agent?.state !== AgentState.AGENT_STATE_RUNNING) ensuredProblems.push(`${agentId} is ${AgentState[got.agent?.state ?? AgentState.AGENT_STATE_UNSPECIFIED] ?? '?'}, not running`);
    else if (slot === undefined || slot.host.state !== 'connected') ensuredProblems.push(`${agentId} runs on ${got.agent.hostId}, not a connected soak host`);
    else if (!isLiveOn(agentId, slot)) ensuredProblems.push(`${agentId}: the control plane says host ${slot.index}, where the soak sees no live instance of it`);
    if (live.length !== 1) ensuredProblems.push(`${agentId} has ${live.length} live instances (${live.map((i) => `host ${i.slot}#${i.hostIncarnation}`).join(', ')})`);
  }
  for (const problem of ensuredProblems) fail(`at the end: ${problem}`);

  let storm: StormResult | undefined;
  if (options.stormHosts > 0) {
    say(`reconnect storm: ${options.stormHosts} hosts, each on its own connection, through one proxy`);
    storm = await runStorm({ hosts: options.stormHosts, controlPlanePort: port, admin, logger: logger.child({ storm: true }), boundMs: Math.max(STEP_BOUND_MS, options.stormHosts * 200) });
    say(
      `  storm: ${storm.back}/${storm.hosts} back, reconnect min ${storm.reconnectMs.min} ms, median ${storm.reconnectMs.median} ms, max ${storm.reconnectMs.max} ms; ` +
        `${storm.adminCalls} ListHosts calls (${storm.adminFailures} failed); agents started again ${storm.agentsStartedAgain}, incarnations changed ${storm.incarnationsChanged}`,
    );
    if (storm.back !== storm.hosts) fail(`storm: only ${storm.back} of ${storm.hosts} hosts came back`);
    if (storm.agentsStartedAgain > 0 || storm.incarnationsChanged > 0) fail(`storm: agents restarted (${storm.agentsStartedAgain} started again, ${storm.incarnationsChanged} incarnations changed)`);
    if (storm.adminFailures > 0) fail(`storm: ${storm.adminFailures} ListHosts calls failed`);
    for (const problem of storm.problems) fail(`storm: ${problem}`);
  }

  // Shutdown: hosts gracefully, then the control plane with SIGTERM (it must exit 0).
  isShuttingDown = true;
  await within(sampler, 'the time-to-expiry sampler to stop', STEP_BOUND_MS);
  for (const slot of slots) await within(slot.host.close(), `host ${slot.index} to close`, STEP_BOUND_MS);
  await within(Promise.all(crashedHostClosings), 'crashed hosts to be let go', STEP_BOUND_MS);
  await within(Promise.all([...toolLoops]), 'agent tool loops to end', STEP_BOUND_MS);
  for (const slot of slots) await slot.proxy.close();
  admin.close();
  const exit = await cp.stop();
  if (exit.code !== 0) fail(`the control plane exited with ${JSON.stringify(exit)} on SIGTERM: ${cp.stderrText().trim().slice(-500)}`);
  await new Promise<void>((resolve) => cpLog.end(() => resolve()));
  logger.flush();
  try {
    hostLogDestination.flushSync();
  } catch {
    // Not open yet: nothing was written.
  }

  // Logs: no token, no admin or join token, anywhere.
  const logs = `${readFileSync(cpLogPath, 'utf8')}\n${readFileSync(hostLogPath, 'utf8')}`;
  if (JWT_SHAPE.test(logs)) fail('a log holds something JWT-shaped');
  if (logs.includes(adminToken) || joinTokens.some((t) => logs.includes(t))) fail('a log holds the admin token or a join token');
  const cpErrors = readFileSync(cpLogPath, 'utf8')
    .split('\n')
    .filter((line) => /"level":(50|60)/.test(line)).length;

  // The verdict.
  ledger.finish();
  ledger.judgeOverlaps();
  const endedAtMs = elapsed();
  ledger.judgeSelfFences((slot, atMs) => slots[slot]?.reach.wasInLongOutage(atMs, endedAtMs) ?? false);
  const c = ledger.counts;
  const check = (count: number, what: string): void => {
    if (count > 0) fail(`${count} ${what}`);
  };
  check(c.messagesLost, 'messages lost');
  check(c.seqsMissing, 'seqs never delivered though later ones were');
  check(c.outOfOrder, 'messages out of order');
  check(c.duplicatedIntoAgent, 'messages duplicated into an agent while its host lived');
  check(c.misdelivered, "messages delivered to an agent they were not for");
  check(c.contentMismatches, 'messages whose seq carried another message');
  check(c.sendOrderMismatches, 'sends given seqs out of send order');
  check(c.restartsWhileHostLived, 'agents started again while their host lived');
  check(c.selfFencesUnexcused, 'hosts fenced themselves outside a scheduled outage longer than TTL/3');
  check(c.unauthenticatedCounted, 'tool calls refused UNAUTHENTICATED while their host reached the control plane');
  check(c.hostHeartbeatUnauthenticatedCounted, 'host heartbeats refused UNAUTHENTICATED while the host reached the control plane');
  check(c.refusedAsItself, 'tool calls refused PERMISSION_DENIED though the agent acted as itself');
  check(c.wrongIdentity, 'WhoAmI answers naming another agent');
  check(c.actedAsAnother, 'calls as another agent accepted');
  check(c.pinnedMoved, 'dispatched agents started on another host than theirs');
  check(c.overlappingReceipts, 'pairs of instances of one agent that took messages over overlapping stretches of time');
  check(c.overlappingValidity, 'pairs of instances of one agent whose calls were accepted over overlapping stretches of time (two valid incarnations at once)');
  check(c.movesWithoutNewIncarnation, 'moves without a new incarnation');
  const [mid, end] = [quietPoints.at(-2), quietPoints.at(-1)];
  const growth: string[] = [];
  if (mid !== undefined && end !== undefined) {
    for (const which of ['soak', 'controlPlane'] as const) {
      const before = mid[which];
      const after = end[which];
      const heapGrowth = after.heapUsedBytes / before.heapUsedBytes - 1;
      const fdGrowth = after.openFds - before.openFds;
      const label = which === 'soak' ? 'soak process' : 'control plane';
      growth.push(`${label}: heap ${(heapGrowth * 100).toFixed(1)} %, fds ${fdGrowth >= 0 ? '+' : ''}${fdGrowth}`);
      if (before.pid !== after.pid) fail(`${label}: the quiet points ${mid.name} and ${end.name} are of different processes`);
      if (heapGrowth > MAX_HEAP_GROWTH) fail(`${label}: heap grew ${(heapGrowth * 100).toFixed(1)} % between quiet points ${mid.name} and ${end.name}`);
      if (fdGrowth > MAX_FD_GROWTH) fail(`${label}: ${fdGrowth} more open descriptors between quiet points ${mid.name} and ${end.name}`);
    }
  }

  const longestOutageMs = Math.max(0, ...outages.map((o) => o.downMs));
  const faultLine = ALL_FAULTS.map((kind) => `${kind}×${faultCounts.get(kind) ?? 0}`).join(' ');
  const lines = [
    '',
    `soak summary (seed ${options.seed}; store ${schema === undefined ? 'sqlite' : `postgres, schema ${schema.name}`}; replay: npm run soak -- --minutes ${options.minutes} --seed ${options.seed}${replayStore(options)})`,
    `  ran ${(elapsed() / 60_000).toFixed(1)} min: ${options.hosts} hosts, ${options.agents} agents, agent TTL ${agentTtlMs / 1000} s (a third: ${(agentTtlMs / 3000).toFixed(1)} s)`,
    `  faults: ${faultLine}; longest blackhole ${(longestBlackholeMs / 1000).toFixed(1)} s; longest cp-restart ${(longestCpDowntimeMs / 1000).toFixed(1)} s (kill to every host back)`,
    `  forced rotations: ${rotations.ok} ok, ${rotations.notConnected} refused (host not connected), ${rotations.other} other`,
    `  control-plane outages (kill to listening): ${outages.length}, longest ${(longestOutageMs / 1000).toFixed(1)} s = ${((longestOutageMs / (agentTtlMs / 3)) * 100).toFixed(0)} % of TTL/3; ` +
      `lowest time-to-expiry at the kill ${outages.length === 0 ? '-' : `${(Math.min(...outages.map((o) => o.lowestLeftAtKillMs)) / 1000).toFixed(1)}–${(Math.max(...outages.map((o) => o.lowestLeftAtKillMs)) / 1000).toFixed(1)} s`}; ` +
      `listening to Hello max ${outages.length === 0 ? '-' : `${Math.max(...outages.flatMap((o) => o.helloAfterListenMs))} ms`}; reconnect attempts while down ${outages.length === 0 ? '-' : `${Math.min(...outages.flatMap((o) => o.attempts))}–${Math.max(...outages.flatMap((o) => o.attempts))}`} per host`,
    longPartitions.length === 0
      ? `  long partition: skipped, run too short (${longPartitionSkips.join('; ') || 'no phase had room'})`
      : `  long partitions (> TTL): ${longPartitions.map((p) => `host ${p.slot} ${(p.ms / 1000).toFixed(1)} s, back ${p.healToConnectedMs} ms and rotated ${p.healToRotatedMs} ms after the heal`).join('; ')}` +
        (longPartitionSkips.length === 0 ? '' : `; skipped in ${longPartitionSkips.join('; ')}`),
    hostDeaths.length === 0
      ? `  host deaths (dead past the grace): none, skipped, run too short (${hostDeathSkips.join('; ') || 'no phase had room'})`
      : `  host deaths (dead past the ${graceMs / 1000} s grace): ${hostDeaths.length}, ${hostDeaths.reduce((n, d) => n + d.moved, 0)} ensured agents moved; ` +
        `death to running elsewhere max ${(Math.max(...hostDeaths.map((d) => d.deathToRunningElsewhereMs)) / 1000).toFixed(1)} s ` +
        `(${hostDeaths.map((d) => `host ${d.slot}: ${d.moved} in ${(d.deathToRunningElsewhereMs / 1000).toFixed(1)} s of ${(d.boundMs / 1000).toFixed(1)} s allowed, back ${d.returnMs} ms, stale copies ${d.staleStarts}`).join('; ')})` +
        (hostDeathSkips.length === 0 ? '' : `; skipped in ${hostDeathSkips.join('; ')}`),
    `  ensured agents: ${ensuredIds.size} of ${options.agents}; moves ${c.moves} (${c.movesByDrain} by drains, ${c.movesBeforeOldStopped} before the old copy was seen stopped), ` +
      (longPartitions.length === 0
        ? 'no long partition; '
        : `long partitions moved ${longPartitions.reduce((n, p) => n + p.moved, 0)} (${longPartitions.filter((p) => p.isMovedOff).length} of ${longPartitions.length} had to move them off before the heal; ` +
          `seen gone by the control plane ${longPartitions.map((p) => `${(p.noticedAfterMs / 1000).toFixed(1)} s`).join(', ')} after the cut; ` +
          `cut to running again max ${(Math.max(...longPartitions.map((p) => p.cutToMovedMs)) / 1000).toFixed(1)} s); `) +
      `drains ${drains.length}${drains.length === 0 ? ' (none scheduled)' : ` (${drains.map((d) => `host ${d.slot}: ${d.moved} moved in ${(d.drainToMovedMs / 1000).toFixed(1)} s, ${d.outcomes}`).join('; ')})`}; ` +
      `at the end not running somewhere ${ensuredProblems.length}`,
    `  two copies at once: overlapping receipts ${c.overlappingReceipts}, overlapping validity ${c.overlappingValidity}, moves without a new incarnation ${c.movesWithoutNewIncarnation}, dispatched agents moved ${c.pinnedMoved}`,
    `  hung agents stopped: ${hungAgents.length} (${hungAgents.filter((h) => h.outcome === 'abandoned').length} abandoned, deadline ${STOP_DEADLINE_MS / 1000} s; ` +
      `StopAgent to report ${hungAgents.length === 0 ? '-' : `${Math.min(...hungAgents.map((h) => h.stopToReportMs))}–${Math.max(...hungAgents.map((h) => h.stopToReportMs))} ms`}; ` +
      `neighbours meanwhile took ${hungAgents.reduce((n, h) => n + h.neighbourMessages, 0)} messages, applied ${hungAgents.reduce((n, h) => n + h.neighbourRotations, 0)} rotations)`,
    `  longest time down per host (stream, observed; excuses nothing): ${slots.map((s) => `${s.index}: ${(s.reach.longestStreamDownMs(elapsed()) / 1000).toFixed(1)} s`).join(', ')}`,
    `  messages: sent ${c.messagesSent}, delivered ${c.messagesDelivered}, lost ${c.messagesLost} (+${c.seqsMissing} seqs missing), out of order ${c.outOfOrder}, ` +
      `duplicated into an agent ${c.duplicatedIntoAgent}, redelivered after a host crash ${c.redeliveredAfterHostCrash} (seq already seen, counted apart), ` +
      `misdelivered ${c.misdelivered}, delivered though their send was unconfirmed ${c.deliveredUnconfirmed}; send retries ${load.retries} (${[...load.retryCodes].map(([k, v]) => `${k}×${v}`).join(', ') || 'none'})`,
    `  agents: started again after a host crash ${c.restartsAfterHostCrash}, started again while their host lived ${c.restartsWhileHostLived}, ` +
      `started again after their host fenced itself ${c.restartsAfterSelfFence} (self-fences ${c.selfFences} in scheduled outages, ${c.selfFencesUnexcused} outside)`,
    `  tool calls: made ${c.toolCalls} (ok ${c.toolCallsOk}, unavailable ${c.toolCallsUnavailable}, other ${c.toolCallsOther}); UNAUTHENTICATED counted against the promise ${c.unauthenticatedCounted}, ` +
      `excused ${c.unauthenticatedExcused} (by the schedule: a scheduled outage of the host > TTL/3, until TTL/3 after it); host heartbeats UNAUTHENTICATED ${c.hostHeartbeatUnauthenticatedCounted} (+${c.hostHeartbeatUnauthenticatedExcused} excused)`,
    `  identity: refused as itself ${c.refusedAsItself}, WhoAmI named another ${c.wrongIdentity}, calls as another agent ${c.crossAgentAttempts} (refused ${c.crossAgentRefused}, accepted ${c.actedAsAnother})`,
    ...quietPoints.map(
      (q) =>
        `  memory at ${q.name} (+${(q.atMs / 1000).toFixed(0)} s): soak heap ${mib(q.soak.heapUsedBytes)}, RSS ${mib(q.soak.rssBytes)}, ${q.soak.openFds} fds; ` +
        `control plane pid ${q.controlPlane.pid} heap ${mib(q.controlPlane.heapUsedBytes)}, RSS ${mib(q.controlPlane.rssBytes)}, ${q.controlPlane.openFds} fds`,
    ),
    `  growth ${mid?.name ?? '?'} → ${end?.name ?? '?'} (limits: heap ${MAX_HEAP_GROWTH * 100} %, fds +${MAX_FD_GROWTH}): ${growth.join('; ')}`,
    `  control plane: ${cpErrors} error lines in its log; exit on SIGTERM ${JSON.stringify(exit)}`,
    ...(storm === undefined ? [] : [`  storm: ${storm.back}/${storm.hosts} back; reconnect min/median/max ${storm.reconnectMs.min}/${storm.reconnectMs.median}/${storm.reconnectMs.max} ms; ListHosts ${storm.adminCalls} (${storm.adminFailures} failed)`]),
    ...ledger.incidents.slice(0, 20).map((text) => `  incident: ${text}`),
    violations.length === 0 ? '  verdict: PASS' : `  verdict: FAIL (${violations.length}): ${violations.join('; ')}`,
  ];
  console.log(lines.join('\n'));
  if (violations.length === 0 && !options.isKeeping) {
    rmSync(dir, { recursive: true, force: true });
    await schema?.drop();
  } else {
    console.log(`  data and logs kept in ${dir}`);
    if (schema !== undefined) console.log(`  store kept: schema ${schema.name} (${schema.shownUrl}; DROP SCHEMA ${schema.name} CASCADE when done)`);
  }
  return violations.length === 0 ? 0 : 1;
}

async function main(): Promise<void> {
  const startedAtMs = Date.now();
  let options: SoakOptions;
  try {
    options = parseOptions(process.argv);
  } catch (err) {
    console.error(`soak: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 2;
    return;
  }
  // The watchdog: a soak that runs far past its time is a hang, and fails.
  const watchdogMs = options.minutes * 60_000 * 2 + 15 * 60_000 + options.stormHosts * 1_000;
  const watchdog = setTimeout(() => {
    console.error(`soak: still running after ${Math.round(watchdogMs / 60_000)} min; giving up (seed ${options.seed})`);
    process.exit(1);
  }, watchdogMs);
  watchdog.unref();
  let code: number;
  try {
    code = await soak(options, startedAtMs);
  } catch (err) {
    console.error(`soak: failed (seed ${options.seed}):`, err);
    code = 1;
  }
  clearTimeout(watchdog);
  const open = new Map<string, number>();
  for (const type of process.getActiveResourcesInfo()) open.set(type, (open.get(type) ?? 0) + 1);
  console.log(`  still open in the soak process at the end: ${[...open].map(([type, n]) => `${type}×${n}`).join(', ') || 'nothing'}`);
  // Exit here rather than when the event loop runs dry: after a 1,000-host storm, Node's own teardown
  // of the environment was once seen spinning at 100 % CPU for good (nodejs/node#47748), verdict printed.
  process.exit(code);
}

await main();
