import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { SystemClock } from '../../common/clock.js';
import { readSecret, type DurationBounds } from '../../common/cli.js';
import { createLogger, type Logger } from '../../common/logger.js';
import { parseSecret, SecretRedactor } from '../../common/secrets.js';
import { AUDIT_RETENTION_BOUNDS } from '../audit/audit-log.js';
import { ControlPlane } from '../control-plane.js';
import { InvalidArgumentError as CommanderInvalidArgument } from 'commander';
import { PostgresStore } from '../store/postgres-store.js';
import { connectionStringPassword, isPostgresUrl, redactConnectionString } from '../store/postgres-url.js';
import { claimDatabase } from '../store/sqlite-backup.js';
import { databasePath, SqliteStore } from '../store/sqlite-store.js';
import type { Store } from '../store/store.js';

const SECOND_MS = 1_000;
const MINUTE_MS = 60 * SECOND_MS;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;

/**
 * The range of each duration flag of `control-plane serve`. Floors where zero
 * makes no sense (a token that is born expired, a keepalive that floods);
 * ceilings everywhere, well past any sane setting.
 */
export const SERVE_DURATION_BOUNDS = {
  agentTokenTtl: { minMs: 10 * SECOND_MS, maxMs: 7 * DAY_MS },
  hostTokenTtl: { minMs: MINUTE_MS, maxMs: 365 * DAY_MS },
  audienceTokenTtl: { minMs: SECOND_MS, maxMs: DAY_MS },
  joinTokenTtl: { minMs: SECOND_MS, maxMs: 30 * DAY_MS },
  clockTolerance: { minMs: 0, maxMs: HOUR_MS },
  heartbeatInterval: { minMs: SECOND_MS, maxMs: HOUR_MS },
  keepalive: { minMs: SECOND_MS, maxMs: 2 * HOUR_MS },
  shutdownGrace: { minMs: 0, maxMs: 10 * MINUTE_MS },
  lostHostGrace: { minMs: SECOND_MS, maxMs: 30 * DAY_MS },
  auditMaxAge: AUDIT_RETENTION_BOUNDS.maxAgeMs,
  eventRetention: { minMs: MINUTE_MS, maxMs: 365 * DAY_MS },
} as const satisfies Record<string, DurationBounds>;

/** Flags of `control-plane serve`. */
export interface ServeFlags {
  listen: string;
  httpListen: string;
  dataDir: string;
  adminTokenFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  insecure?: boolean;
  agentTokenTtl: number;
  audienceTokenTtl: number;
  issuerUrl?: string;
  hostTokenTtl: number;
  joinTokenTtl: number;
  clockTolerance: number;
  /** Undefined: the least allowed, a third of the agent token TTL plus the clock tolerance. */
  lostHostGrace?: number;
  heartbeatInterval: number;
  keepalive: number;
  shutdownGrace: number;
  maxRotationsPerSecond: number | 'auto';
  maxConcurrentHellos: number;
  deliveryWindow: number;
  maxDeliveryAttempts: number;
  maxOutboxMessages: number;
  maxOutboxBytes: number;
  maxPayloadBytes: number;
  /** `sqlite` (the embedded store in the data directory) or a `postgres://` connection string. */
  store: string;
  storePoolSize: number;
  auditMaxAge: number;
  auditMaxRecords: number;
  /** How long lifecycle events (watch) are kept. */
  eventRetention: number;
  /** How many lifecycle events are kept at most. */
  eventRetentionCount: number;
  logLevel: string;
}

/** Parses `--store`: `sqlite`, or a PostgreSQL connection string (never echoed back: it can hold a password). */
export function parseStore(value: string): string {
  if (value === 'sqlite' || isPostgresUrl(value)) return value;
  throw new CommanderInvalidArgument('expected sqlite or a postgres:// connection string');
}

/** A new random admin token: 32 bytes, base64url (header-safe, one line). */
export function newAdminToken(): string {
  return randomBytes(32).toString('base64url');
}

/** Creates a file with mode 0600 from the start (never chmod after writing); leaves an existing one alone. */
async function createSecretFile(path: string, content: string): Promise<boolean> {
  try {
    const handle = await open(path, 'wx', 0o600);
    try {
      await handle.writeFile(content, 'utf8');
    } finally {
      await handle.close();
    }
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

/**
 * The admin token: from --admin-token-file or $TETHER_ADMIN_TOKEN; otherwise the
 * one in `<data-dir>/admin-token`, generated on first run. Beside it,
 * `admin-headers` holds the header line for `buf curl -H @file`.
 */
export async function resolveAdminToken(flags: Pick<ServeFlags, 'adminTokenFile' | 'dataDir'>, logger: Logger, redactor?: SecretRedactor): Promise<string> {
  const given = readSecret(flags.adminTokenFile, 'TETHER_ADMIN_TOKEN', redactor);
  if (given !== undefined) return given;
  const path = join(flags.dataDir, 'admin-token');
  if (await createSecretFile(path, `${newAdminToken()}\n`)) {
    logger.info({ path }, 'generated an admin token');
  }
  const raw = readFileSync(path, 'utf8');
  redactor?.register(raw);
  const token = parseSecret(raw, path);
  await createSecretFile(join(flags.dataDir, 'admin-headers'), `authorization: Bearer ${token}\n`);
  return token;
}

/** Runs the control plane until SIGINT or SIGTERM; logged errors are filtered by `redactor` (which learns the admin token as it is read). */
export async function serve(flags: ServeFlags, redactor = new SecretRedactor()): Promise<void> {
  const logger = createLogger({ level: flags.logLevel as 'info', base: { service: 'control-plane' }, redactor });
  mkdirSync(flags.dataDir, { recursive: true, mode: 0o700 });
  if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) throw new Error('--tls-cert and --tls-key go together');
  if (flags.maxOutboxBytes < flags.maxPayloadBytes) {
    throw new Error(`--max-outbox-bytes (${flags.maxOutboxBytes}) must be at least --max-payload-bytes (${flags.maxPayloadBytes}): a largest message must fit an empty outbox`);
  }
  for (const file of [flags.tlsCert, flags.tlsKey]) {
    if (file !== undefined && !existsSync(file)) throw new Error(`no such file: ${file}`);
  }
  // Armed before anything listens: a SIGTERM that comes as soon as the listening line is printed
  // (a supervisor, a test) must shut down gracefully, not kill the process with the default action.
  const stopRequested = new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal }, 'shutting down');
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  const isPostgres = isPostgresUrl(flags.store);
  if (isPostgres) {
    const password = connectionStringPassword(flags.store);
    if (password !== undefined) redactor.register(password);
    if (readSecret(flags.adminTokenFile, 'TETHER_ADMIN_TOKEN', redactor) === undefined) {
      // Everything else lives in PostgreSQL: a control plane started elsewhere on the same store needs the same token.
      logger.warn({ dataDir: flags.dataDir }, 'with a PostgreSQL store, pass the admin token in TETHER_ADMIN_TOKEN or --admin-token-file: the one generated in the data directory stays on this machine');
    }
  }
  const adminToken = await resolveAdminToken(flags, logger, redactor);
  let store: Store;
  let release = (): void => undefined;
  if (isPostgres) {
    store = await PostgresStore.open(flags.store, { poolSize: flags.storePoolSize, logger: logger.child({ component: 'store' }) });
    logger.info({ store: redactConnectionString(flags.store), poolSize: flags.storePoolSize }, 'store: PostgreSQL');
  } else {
    const dbPath = databasePath(flags.dataDir);
    store = SqliteStore.open(dbPath);
    const claim = claimDatabase(dbPath);
    release = claim.release;
    if (claim.otherPid !== undefined) {
      // Not refused: after a crash, the pid in a stale claim can belong to an unrelated process.
      logger.warn({ pid: claim.otherPid, dataDir: flags.dataDir }, 'another live process claims this data directory; two control planes must not share one');
    }
  }
  const controlPlane = await ControlPlane.start({
    store,
    clock: new SystemClock(),
    logger,
    adminToken,
    address: flags.listen,
    ...(flags.httpListen === '' ? {} : { httpAddress: flags.httpListen }),
    // Watched: a replaced certificate and key are served to new connections without a restart.
    ...(flags.tlsCert !== undefined && flags.tlsKey !== undefined ? { tlsFiles: { certFile: flags.tlsCert, keyFile: flags.tlsKey } } : {}),
    isInsecureAllowed: flags.insecure === true,
    agentTokenTtlMs: flags.agentTokenTtl,
    audienceTokenTtlMs: flags.audienceTokenTtl,
    ...(flags.issuerUrl === undefined || flags.issuerUrl === '' ? {} : { issuerUrl: flags.issuerUrl }),
    hostTokenTtlMs: flags.hostTokenTtl,
    joinTokenTtlMs: flags.joinTokenTtl,
    clockToleranceMs: flags.clockTolerance,
    ...(flags.lostHostGrace === undefined ? {} : { lostHostGraceMs: flags.lostHostGrace }),
    heartbeatIntervalMs: flags.heartbeatInterval,
    keepaliveTimeMs: flags.keepalive,
    maxRotationsPerSecond: flags.maxRotationsPerSecond,
    maxConcurrentHellos: flags.maxConcurrentHellos,
    deliveryWindow: flags.deliveryWindow,
    maxDeliveryAttempts: flags.maxDeliveryAttempts,
    maxOutboxMessages: flags.maxOutboxMessages,
    maxOutboxBytes: flags.maxOutboxBytes,
    maxPayloadBytes: flags.maxPayloadBytes,
    shutdownGraceMs: flags.shutdownGrace,
    auditMaxAgeMs: flags.auditMaxAge,
    auditMaxRecords: flags.auditMaxRecords,
    eventRetentionMs: flags.eventRetention,
    eventRetentionCount: flags.eventRetentionCount,
  });
  await stopRequested;
  await controlPlane.close();
  await store.close();
  release();
  logger.flush();
}
