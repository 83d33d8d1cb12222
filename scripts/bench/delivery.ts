/**
 * `npm run bench:delivery`: delivery throughput into agents, against a raw
 * grpc-js bidi stream pushing the same number of messages of the same size.
 *
 * Delivery: a control plane (SQLite in a temp dir, default options, so the
 * default delivery window) and one agent host with N module agents, all in this
 * process on the real clock, over loopback. The operator sends every message
 * with AdminService.SendMessages (batches, one sequential sender per agent, so
 * each agent's order is the send order); the figure is messages per second from
 * the first send to the last message an agent took. Each run uses a fresh store.
 *
 * Raw: a minimal grpc-js server that writes N messages down one bidi stream
 * (honouring write() === false and 'drain') to a client counting them, in this
 * process too, each message the size of one encoded Deliver envelope.
 *
 * Delivery runs once per store mode (before and after `synchronous = FULL` and
 * group commit, in one invocation), with the event-loop delay during each run.
 * Prints the median of BENCH_RUNS runs of each and the ratio to raw. Environment:
 * BENCH_MESSAGES (20000), BENCH_AGENTS (10), BENCH_RUNS (3), BENCH_BATCH (500),
 * BENCH_PAYLOAD_BYTES (16), BENCH_MODES (all: normal, full-unbatched, full),
 * BENCH_DIR (OS temp dir; refused on tmpfs). Every wait is bounded by
 * BENCH_BOUND_MS (120000).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { SystemClock } from '../../common/clock.js';
import { createLogger } from '../../common/logger.js';
import { ControlPlane } from '../../control-plane/control-plane.js';
import { SqliteStore } from '../../control-plane/store/sqlite-store.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { ControlMessage } from '../../gen/tether/v1/host.js';
import { benchDir, BOUND_MS, envCount, median, printTable, selectedModes, startTiming, type StoreMode, type Timing, unary, within } from './bench-support.js';

const MESSAGES = envCount('BENCH_MESSAGES', 20_000);
const AGENTS = envCount('BENCH_AGENTS', 10);
const RUNS = envCount('BENCH_RUNS', 3);
const BATCH = envCount('BENCH_BATCH', 500);
const PAYLOAD_BYTES = envCount('BENCH_PAYLOAD_BYTES', 16);
/** The control plane's delivery window; unset: its default. */
const WINDOW = process.env.BENCH_WINDOW === undefined ? undefined : envCount('BENCH_WINDOW', 32);

/** One delivery run: from the first send to the last message taken. */
async function deliveryRun(root: string, mode: StoreMode): Promise<Timing> {
  const dir = mkdtempSync(join(root, 'tether-bench-'));
  const store = SqliteStore.open(join(dir, 'tether.db'), mode.store);
  const clock = new SystemClock();
  const logger = createLogger({ level: 'warn' });
  const adminToken = randomBytes(24).toString('base64url');
  const cp = await ControlPlane.start({
    store,
    clock,
    logger,
    adminToken,
    address: '127.0.0.1:0',
    maxConcurrentRotations: mode.maxConcurrentRotations,
    ...(WINDOW === undefined ? {} : { deliveryWindow: WINDOW }),
  });
  const target = `127.0.0.1:${cp.port}`;
  const admin = new AdminServiceClient(target, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor({ get: () => adminToken })] });
  let host: AgentHost | undefined;
  try {
    let taken = 0;
    let allTaken: () => void = () => undefined;
    const done = new Promise<void>((resolve) => {
      allTaken = resolve;
    });
    const counter: AgentModule = () => ({
      onMessage: () => {
        taken++;
        if (taken === MESSAGES) allTaken();
        return Promise.resolve();
      },
    });
    const enrolled = await unary(admin.enrollHost.bind(admin), { name: 'bench-host', joinTtlMs: 0 });
    const started = new Set<string>();
    let allStarted: () => void = () => undefined;
    const isStarted = new Promise<void>((resolve) => {
      allStarted = resolve;
    });
    const connected = new Promise<void>((resolve) => {
      host = AgentHost.start({
        target,
        clock,
        logger,
        credentialStore: new MemoryHostCredentialStore(),
        joinToken: enrolled.joinToken,
        modules: new Map([['counter', counter]]),
      });
      host.events.once('connected', () => resolve());
      host.events.on('agent-started', ({ agentId }) => {
        started.add(agentId);
        if (started.size === AGENTS) allStarted();
      });
    });
    await within(connected, 'host connection');
    const agentIds = Array.from({ length: AGENTS }, (_, i) => `bench-agent-${i}`);
    for (const agentId of agentIds) {
      await unary(admin.dispatchAgent.bind(admin), {
        agentId,
        name: agentId,
        hostId: enrolled.hostId,
        hostLabels: [],
        spec: { kind: 'module', module: 'counter', command: '', args: [], config: '' },
      });
    }
    await within(isStarted, 'agents started');

    const perAgent = Math.ceil(MESSAGES / AGENTS);
    const payload = randomBytes(PAYLOAD_BYTES);
    const stopTiming = startTiming();
    const sending = agentIds.map(async (agentId, index) => {
      const count = Math.max(0, Math.min(perAgent, MESSAGES - index * perAgent));
      for (let sent = 0; sent < count; sent += BATCH) {
        const size = Math.min(BATCH, count - sent);
        await unary(admin.sendMessages.bind(admin), {
          agentId,
          messages: Array.from({ length: size }, (_, i) => ({ contentType: 'application/octet-stream', payload, idempotencyKey: `${agentId}/${sent + i}` })),
        });
      }
    });
    await within(Promise.all(sending), 'sends answered');
    await within(done, `all ${MESSAGES} messages taken`);
    return stopTiming();
  } finally {
    await host?.close();
    admin.close();
    await cp.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const RAW_PATH = '/bench.Push/Push';
const identity = (value: Buffer): Buffer => value;
const RAW_SERVICE: grpc.ServiceDefinition = {
  push: {
    path: RAW_PATH,
    requestStream: true,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
    originalName: 'push',
  },
};

/** One raw run: a server pushes `MESSAGES` messages of `size` bytes down one bidi stream, until the client counted them all. */
async function rawRun(size: number): Promise<Timing> {
  const server = new grpc.Server();
  const message = randomBytes(size);
  server.addService(RAW_SERVICE, {
    push: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.once('data', (request: Buffer) => {
        const count = request.readUInt32BE(0);
        let written = 0;
        const pump = (): void => {
          while (written < count) {
            written++;
            if (!call.write(message)) {
              call.once('drain', pump);
              return;
            }
          }
          call.end();
        };
        pump();
      });
      call.on('error', () => undefined);
    },
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, bound) => (err === null ? resolve(bound) : reject(err)));
  });
  const Client = grpc.makeGenericClientConstructor(RAW_SERVICE, 'Push');
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  try {
    await within(
      new Promise<void>((resolve, reject) => client.waitForReady(Date.now() + BOUND_MS, (err) => (err === undefined || err === null ? resolve() : reject(err)))),
      'raw channel ready',
    );
    const call = client.makeBidiStreamRequest<Buffer, Buffer>(RAW_PATH, identity, identity);
    const stopTiming = startTiming();
    const received = new Promise<void>((resolve, reject) => {
      let count = 0;
      call.on('data', () => {
        count++;
        if (count === MESSAGES) resolve();
      });
      call.on('error', reject);
    });
    const request = Buffer.alloc(4);
    request.writeUInt32BE(MESSAGES, 0);
    call.write(request);
    await within(received, `all ${MESSAGES} raw messages`);
    const timing = stopTiming();
    call.end();
    return timing;
  } finally {
    client.close();
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  }
}

/** The size of one Deliver envelope as the control plane writes it, so the raw messages weigh the same. */
function deliverEnvelopeBytes(): number {
  return ControlMessage.encode({
    deliver: {
      agentId: `bench-agent-${AGENTS - 1}`,
      seq: MESSAGES,
      attempt: 1,
      message: { id: randomUUID(), from: 'operator', contentType: 'application/octet-stream', payload: randomBytes(PAYLOAD_BYTES), createdAtMs: Date.now() },
    },
  }).finish().length;
}

async function main(): Promise<void> {
  const root = benchDir();
  const modes = selectedModes();
  const envelopeBytes = deliverEnvelopeBytes();
  console.log(
    `bench:delivery — ${MESSAGES} messages (${PAYLOAD_BYTES}-byte payloads, ${envelopeBytes}-byte envelopes) to ${AGENTS} agents, ` +
      `batches of ${BATCH}, ${RUNS} runs each; control plane and host in this process, loopback`,
  );
  const delivery = new Map<StoreMode, Timing[]>(modes.map((mode) => [mode, []]));
  const raw: Timing[] = [];
  for (let run = 1; run <= RUNS; run++) {
    // Each run starts with another mode, so none always pays for the first (cold) run.
    for (const mode of [...modes.slice((run - 1) % modes.length), ...modes.slice(0, (run - 1) % modes.length)]) {
      const timing = await deliveryRun(root, mode);
      delivery.get(mode)?.push(timing);
      console.log(
        `  run ${run}, ${mode.key}: delivery ${timing.wallMs.toFixed(0)} ms (CPU ${timing.cpuMs.toFixed(0)} ms), ` +
          `loop delay p99 ${timing.loopP99Ms.toFixed(1)} ms, max ${timing.loopMaxMs.toFixed(1)} ms`,
      );
    }
    const rawTiming = await rawRun(envelopeBytes);
    raw.push(rawTiming);
    console.log(`  run ${run}: raw ${rawTiming.wallMs.toFixed(0)} ms (CPU ${rawTiming.cpuMs.toFixed(0)} ms)`);
  }
  const rawRate = MESSAGES / (median(raw.map((t) => t.wallMs)) / 1000);
  const row = (name: string, timings: Timing[]): string[] => {
    const wallMs = median(timings.map((t) => t.wallMs));
    const rate = MESSAGES / (wallMs / 1000);
    return [
      name,
      wallMs.toFixed(0),
      rate.toFixed(0),
      ((median(timings.map((t) => t.cpuMs)) * 1000) / MESSAGES).toFixed(1),
      median(timings.map((t) => t.loopP99Ms)).toFixed(1),
      Math.max(...timings.map((t) => t.loopMaxMs)).toFixed(1),
      (rate / rawRate).toFixed(3),
    ];
  };
  printTable([
    ['', 'median ms', 'messages/s', 'CPU µs/message', 'loop delay p99 ms', 'loop delay max ms', '/ raw'],
    ...modes.map((mode) => row(`tether delivery, ${mode.name}`, delivery.get(mode) ?? [])),
    row('raw grpc-js bidi push', raw),
  ]);
}

await main();
