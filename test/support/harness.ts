import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AgentHost, type AgentHostOptions } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { ControlPlane, type ControlPlaneOptions } from '../../control-plane/control-plane.js';
import { SqliteStore } from '../../control-plane/store/sqlite-store.js';
import type { Store } from '../../control-plane/store/store.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { AgentServiceClient } from '../../gen/tether/v1/agent.js';
import { FakeClock } from './fake-clock.js';
import { LogCapture } from './log-capture.js';
import { assertNoSecrets } from './secrets.js';
import { createTestStoreLocation, type TestStore, type TestStoreEngine, type TestStoreLocation } from './test-store.js';
import { nextEvent, waitUntil } from './wait.js';

/** Calls a grpc-js unary method and returns a Promise. */
export function call<Req, Res>(
  method: (
    request: Req,
    metadata: grpc.Metadata,
    options: Partial<grpc.CallOptions>,
    callback: (err: grpc.ServiceError | null, response: Res) => void,
  ) => grpc.ClientUnaryCall,
  request: Req,
  metadata: grpc.Metadata = new grpc.Metadata(),
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, metadata, {}, (err, response) => (err === null ? resolve(response) : reject(err)));
  });
}

/** The status code a promise rejects with (or 'ok'). */
export async function statusOf(promise: Promise<unknown>): Promise<grpc.status | 'ok'> {
  try {
    await promise;
    return 'ok';
  } catch (err) {
    return (err as grpc.ServiceError).code;
  }
}

/** Metadata with `authorization: Bearer <token>`. */
export function bearer(token: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

/** Every pid the harness's hosts logged starting a process agent with. */
export function startedAgentPids(harness: Harness): number[] {
  return harness.logs
    .records()
    .filter((r) => r.msg === 'agent process started' && typeof r.pid === 'number')
    .map((r) => r.pid as number);
}

/** SIGKILLs every process agent the harness's hosts started (cleanup: a test may end with some running). */
export function killStartedAgentProcesses(harness: Harness | undefined): void {
  for (const pid of harness === undefined ? [] : startedAgentPids(harness)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

/** A module agent that does nothing but exist (and heartbeat, which the host does for it). */
export const idleModule: AgentModule = () => ({});

/** Options of {@link Harness.start}. */
export interface HarnessOptions extends Partial<Omit<ControlPlaneOptions, 'store' | 'clock' | 'logger' | 'adminToken'>> {
  clock?: FakeClock;
  logs?: LogCapture;
  dataDir?: string;
  /** The store engine; default this run's (TETHER_TEST_STORE, SQLite when unset). */
  storeEngine?: TestStoreEngine;
  /** Another harness's store location, to open the same store (with its `dataDir` for SQLite); that harness drops it. */
  storeLocation?: TestStoreLocation;
  /** What the control plane is given in place of the store: a fake of the Store interface around it (counting, failing, gating calls). */
  wrapStore?: (store: Store) => Store;
}

/**
 * A control plane on a fresh store (a SQLite file in its data directory, or
 * with TETHER_TEST_STORE=postgres a PostgreSQL schema of its own, dropped at
 * close) and a 127.0.0.1:0 port, an admin client, and hosts on demand.
 */
export class Harness {
  readonly clock: FakeClock;
  readonly logs: LogCapture;
  readonly dir: string;
  readonly adminToken = `admin-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
  cp!: ControlPlane;
  store!: TestStore;
  /** Where the store lives, kept across control-plane restarts. */
  storeLocation!: TestStoreLocation;
  admin!: AdminServiceClient;
  readonly hosts: AgentHost[] = [];
  readonly #clients: grpc.Client[] = [];
  readonly #ownsDir: boolean;
  readonly #options: HarnessOptions;

  private constructor(options: HarnessOptions) {
    this.#options = options;
    this.clock = options.clock ?? new FakeClock();
    this.logs = options.logs ?? new LogCapture();
    this.#ownsDir = options.dataDir === undefined;
    this.dir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'tether-test-'));
  }

  /** Starts a control plane (fake clock, debug logs captured). */
  static async start(options: HarnessOptions = {}): Promise<Harness> {
    const harness = new Harness(options);
    harness.storeLocation = options.storeLocation ?? (await createTestStoreLocation(harness.dir, options.storeEngine));
    try {
      await harness.startControlPlane();
    } catch (err) {
      if (options.storeLocation === undefined) await harness.storeLocation.drop();
      throw err;
    }
    return harness;
  }

  /** (Re)starts the control plane on the same data directory. */
  async startControlPlane(): Promise<void> {
    const { clock: _clock, logs: _logs, dataDir: _dataDir, storeEngine: _storeEngine, storeLocation: _storeLocation, wrapStore, ...rest } = this.#options;
    this.store = await this.storeLocation.open();
    this.cp = await ControlPlane.start({
      address: '127.0.0.1:0',
      heartbeatIntervalMs: 3_000,
      // The admin tokens and the audit log on the store itself: `wrapStore` fakes the Store interface only.
      adminTokenStore: this.store,
      auditStore: this.store,
      ...rest,
      store: wrapStore === undefined ? this.store : wrapStore(this.store),
      clock: this.clock,
      logger: this.logs.logger,
      adminToken: this.adminToken,
    });
    this.admin = new AdminServiceClient(`127.0.0.1:${this.cp.port}`, grpc.credentials.createInsecure(), {
      interceptors: [bearerInterceptor({ get: () => this.adminToken })],
    });
    this.#clients.push(this.admin);
  }

  /** The store as SQLite, for a test about SQLite itself; throws on a PostgreSQL run (such a test skips there). */
  get sqliteStore(): SqliteStore {
    if (!(this.store instanceof SqliteStore)) throw new Error('this test needs the SQLite store (TETHER_TEST_STORE=postgres runs skip it)');
    return this.store;
  }

  /** The control plane's gRPC target. */
  get target(): string {
    return `127.0.0.1:${this.cp.port}`;
  }

  /** A raw AgentService client (no credentials attached). */
  agentClient(): AgentServiceClient {
    const client = new AgentServiceClient(this.target, grpc.credentials.createInsecure());
    this.#clients.push(client);
    return client;
  }

  /** Enrolls a host and starts it with its join token; resolves once it is connected. */
  async startHost(
    name = 'host',
    options: Partial<AgentHostOptions> & { modules?: ReadonlyMap<string, AgentModule> } = {},
  ): Promise<{ host: AgentHost; hostId: string; joinToken: string }> {
    const enrolled = await call(this.admin.enrollHost.bind(this.admin), { name, joinTtlMs: 0 });
    const host = AgentHost.start({
      target: this.target,
      clock: this.clock,
      logger: this.logs.logger,
      credentialStore: new MemoryHostCredentialStore(),
      joinToken: enrolled.joinToken,
      modules: new Map([['idle', idleModule]]),
      reconnectMinDelayMs: 10,
      reconnectMaxDelayMs: 50,
      // The fake clock jumps whole steps with no thought of a lost host; tests of fencing turn it on.
      isSelfFenceEnabled: false,
      ...options,
    });
    this.hosts.push(host);
    await nextEvent(host.events, 'connected');
    return { host, hostId: enrolled.hostId, joinToken: enrolled.joinToken };
  }

  /**
   * Dispatches a module agent onto `hostId` and waits for its host to start it
   * and for the control plane to have recorded the host's report (no longer
   * `starting`: a store with round trips, PostgreSQL, records it a moment later).
   */
  async dispatch(host: AgentHost, hostId: string, agentId: string, module = 'idle'): Promise<void> {
    const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === agentId);
    await call(this.admin.dispatchAgent.bind(this.admin), {
      agentId,
      name: agentId,
      hostId,
      hostLabels: [],
      spec: { kind: 'module', module, command: '', args: [], config: '' },
    });
    await started;
    await waitUntil(async () => (await this.store.getAgent(agentId))?.state !== 'starting', `${agentId}'s start recorded by the control plane`);
  }

  /** Stops the control plane (leaves hosts running). */
  async stopControlPlane(): Promise<void> {
    await this.cp.close();
    await this.store.close();
  }

  /**
   * Closes hosts, clients, the control plane and the store; removes the data
   * directory. Then checks the whole run's debug logs: no admin token and
   * nothing JWT-shaped, in every test that uses the harness.
   */
  async close(): Promise<void> {
    for (const host of this.hosts) await host.close();
    for (const client of this.#clients) client.close();
    await this.cp.close();
    await this.store.close();
    if (this.#options.storeLocation === undefined) await this.storeLocation.drop();
    if (this.#ownsDir) rmSync(this.dir, { recursive: true, force: true });
    assertNoSecrets(this.logs.text(), [this.adminToken], 'the captured logs');
  }
}
