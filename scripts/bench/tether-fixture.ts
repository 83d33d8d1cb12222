/**
 * A control plane for a benchmark: SQLite (default options, so
 * `synchronous = FULL` and group commit) in a fresh directory on a real
 * filesystem, or PostgreSQL in a fresh schema (`--store postgres://…`; default
 * options: the pool of 10, synchronous_commit as the server has it), served on
 * 127.0.0.1:0 in this process, with an admin client; plus enrolling hosts,
 * starting real agent hosts and dispatching agents.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AgentHost, type AgentHostOptions } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { SystemClock, type Clock } from '../../common/clock.js';
import { createLogger, type Logger } from '../../common/logger.js';
import { ControlPlane, type ControlPlaneOptions } from '../../control-plane/control-plane.js';
import { PostgresStore } from '../../control-plane/store/postgres-store.js';
import { SqliteStore, type SqliteStoreOptions } from '../../control-plane/store/sqlite-store.js';
import type { Store } from '../../control-plane/store/store.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { createScratchSchema, type ScratchSchema } from '../support/scratch-schema.js';
import { eachLimited, unary, within } from './bench-support.js';

/**
 * The store as configured by BENCH_STORE_MODE, to compare against what the
 * store was: `full` (the default: synchronous = FULL, group commit),
 * `full-unbatched` (FULL, one commit per write) or `normal` (NORMAL, one commit
 * per write: before FULL).
 */
export function storeOptions(): SqliteStoreOptions {
  const mode = process.env.BENCH_STORE_MODE ?? 'full';
  if (mode === 'full' || mode === '') return {};
  if (mode === 'full-unbatched') return { synchronous: 'full', isGroupCommit: false };
  if (mode === 'normal') return { synchronous: 'normal', isGroupCommit: false };
  throw new Error(`BENCH_STORE_MODE must be full, full-unbatched or normal, got ${mode}`);
}

/** Options of a control plane started by {@link TetherFixture.start}, but the store, clock, logger and secret. */
export type FixtureOptions = Partial<Omit<ControlPlaneOptions, 'store' | 'logger' | 'adminToken'>>;

/** A running control plane, its store and an admin client; `close()` ends them and removes the store. */
export class TetherFixture {
  readonly cp: ControlPlane;
  readonly store: Store;
  readonly admin: AdminServiceClient;
  readonly target: string;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly #dir: string;
  readonly #schema: ScratchSchema | undefined;

  private constructor(parts: { cp: ControlPlane; store: Store; admin: AdminServiceClient; clock: Clock; logger: Logger; dir: string; schema: ScratchSchema | undefined }) {
    this.cp = parts.cp;
    this.store = parts.store;
    this.admin = parts.admin;
    this.target = `127.0.0.1:${parts.cp.port}`;
    this.clock = parts.clock;
    this.logger = parts.logger;
    this.#dir = parts.dir;
    this.#schema = parts.schema;
  }

  /**
   * Starts a control plane with a store in a fresh directory under `root`, or
   * (`store` a `postgres://` URL) in a fresh schema on that server.
   */
  static async start(root: string, options: FixtureOptions = {}, storeName = 'sqlite'): Promise<TetherFixture> {
    const dir = mkdtempSync(join(root, 'tether-bench-'));
    const schema = storeName === 'sqlite' ? undefined : await createScratchSchema(storeName, 'bench');
    const store: Store = schema === undefined ? SqliteStore.open(join(dir, 'tether.db'), storeOptions()) : await PostgresStore.open(schema.url);
    const clock = options.clock ?? new SystemClock();
    const logger = createLogger({ level: 'warn' });
    const adminToken = randomBytes(24).toString('base64url');
    const cp = await ControlPlane.start({ address: '127.0.0.1:0', ...options, store, clock, logger, adminToken });
    const admin = new AdminServiceClient(`127.0.0.1:${cp.port}`, grpc.credentials.createInsecure(), { interceptors: [bearerInterceptor({ get: () => adminToken })] });
    return new TetherFixture({ cp, store, admin, clock, logger, dir, schema });
  }

  /** Enrolls a host: its id and one-time join token. */
  async enroll(name: string): Promise<{ hostId: string; joinToken: string }> {
    const enrolled = await unary(this.admin.enrollHost.bind(this.admin), { name, joinTtlMs: 0 });
    return { hostId: enrolled.hostId, joinToken: enrolled.joinToken };
  }

  /** Enrolls and starts a real agent host (a connection of its own) running `modules`; resolves once connected. */
  async startHost(name: string, modules: ReadonlyMap<string, AgentModule>, options: Partial<AgentHostOptions> = {}): Promise<{ host: AgentHost; hostId: string }> {
    const { hostId, joinToken } = await this.enroll(name);
    const host = AgentHost.start({
      target: this.target,
      clock: this.clock,
      logger: this.logger,
      credentialStore: new MemoryHostCredentialStore(),
      joinToken,
      modules,
      capacity: 0,
      channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
      ...options,
    });
    if (host.state !== 'connected') await within(new Promise<void>((resolve) => host.events.once('connected', () => resolve())), `host ${name} connected`);
    return { host, hostId };
  }

  /** Dispatches module agents (`module` on `hostId`), `concurrency` calls at a time. */
  async dispatch(agents: readonly { agentId: string; hostId: string; module: string }[], concurrency = 64): Promise<void> {
    await eachLimited(agents, concurrency, async ({ agentId, hostId, module }) => {
      await unary(this.admin.dispatchAgent.bind(this.admin), { agentId, name: agentId, hostId, hostLabels: [], spec: { kind: 'module', module, command: '', args: [], config: '' } });
    });
  }

  /** Closes the admin client, the control plane and the store, and removes the store's directory (or schema). */
  async close(): Promise<void> {
    this.admin.close();
    await this.cp.close();
    await this.store.close();
    rmSync(this.#dir, { recursive: true, force: true });
    await this.#schema?.drop();
  }
}
