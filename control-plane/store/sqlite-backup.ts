/**
 * Backups of the embedded store, and the only supported way back from one.
 *
 * A backup is `VACUUM INTO` from the live database: one read transaction, so a
 * consistent snapshot that completes however busy the control plane is (the
 * online backup API restarts whenever another connection writes, and under a
 * steady writer never finished). A restore puts one back in place
 * of a stopped control plane's database and starts a new history (a new
 * epoch), because the hosts have lived on past the backup:
 *
 * - Seqs and generations of the old history mean nothing in the new one. Hosts
 *   report their agents under the old epoch, so the control plane starts each
 *   again under a new incarnation with a fresh credential and delivers from
 *   what the restored store knows was taken: at least once, in order.
 * - Credentials issued after the backup are unknown to it. Every agent's and
 *   host's generation is advanced past any the lost history can have reached,
 *   so a host's newest credential still opens its stream and its agents'
 *   heartbeats still pass until their replacements arrive; the control plane
 *   replaces them all on the host's first stream. Nothing the old history
 *   revoked outlives its own expiry.
 * - Join tokens unused at backup time are burnt: one used since would otherwise
 *   enroll its host a second time.
 * - Signing keys the replaced database holds and the backup does not (made
 *   after it) are kept, so the tokens they signed still verify.
 * - Admin tokens follow the replaced database: one retired since the backup
 *   stays retired (a restore must not bring back access that was taken away),
 *   and one added since is kept. The audit records made since stay in the
 *   replaced database, which is kept beside the new one.
 */
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, fstatSync, fsyncSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { migrate, SCHEMA_VERSION, schemaVersion } from './sqlite-schema.js';

/**
 * Added to every generation on restore: more credentials than any agent or host
 * can have been issued since a backup (one a second for 136 years).
 */
export const RESTORE_GENERATION_GAP = 2 ** 32;

/** What a backup holds. */
export interface BackupSummary {
  epoch: string;
  bytes: number;
  hosts: number;
  agents: number;
  /** Messages not yet taken by their agents. */
  pendingMessages: number;
}

/** What a restore did. */
export interface RestoreSummary extends BackupSummary {
  /** The backup's epoch; the restored store has a new one. */
  previousEpoch: string;
  /** Where the replaced database was moved (it is kept), or undefined if there was none. */
  replacedPath: string | undefined;
  joinTokensBurnt: number;
  /** Signing keys kept from the replaced database. */
  signingKeysKept: number;
  /** Admin tokens retired in the replaced database that the backup had valid, or did not have: retired or kept as they were. */
  adminTokensCarried: number;
  /** The backup's schema version; the restored store has this binary's. */
  previousSchemaVersion: number;
}

/** The backup or the data directory is not fit for the operation; the message says why. */
export class BackupError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'BackupError';
  }
}

/** The file a serving control plane keeps its pid in, beside its database. */
export function pidFilePath(dbPath: string): string {
  return `${dbPath}.pid`;
}

/**
 * Records that this process serves `dbPath`, so a restore refuses to run under
 * it. If another live process holds the claim it is left alone (and named in
 * `otherPid`): its claim must outlive this process. `release` removes the
 * record only if it is this process's.
 */
export function claimDatabase(dbPath: string): { release: () => void; otherPid: number | undefined } {
  const path = pidFilePath(dbPath);
  const release = (): void => {
    if (runningPid(dbPath) === process.pid) rmSync(path, { force: true });
  };
  const other = runningPid(dbPath);
  if (other !== undefined && other !== process.pid) return { release, otherPid: other };
  rmSync(path, { force: true });
  const fd = openSync(path, 'wx', 0o600);
  try {
    writeSync(fd, `${process.pid}\n`);
  } finally {
    closeSync(fd);
  }
  return { release, otherPid: undefined };
}

/** The pid of a live process that claimed `dbPath`, if any (a stale claim reads as none). */
export function runningPid(dbPath: string): number | undefined {
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(pidFilePath(dbPath), 'utf8').trim(), 10);
  } catch {
    return undefined;
  }
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    // EPERM: alive, someone else's.
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : undefined;
  }
}

/** Opens a database file that must already be a Tether store; checks its integrity. */
function openChecked(path: string, what: string): Database.Database {
  if (!existsSync(path)) throw new BackupError(`${what} ${path} does not exist`);
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { fileMustExist: true });
    const check = db.pragma('integrity_check', { simple: true });
    if (check !== 'ok') throw new BackupError(`${what} ${path} is damaged: ${String(check)}`);
    const version = schemaVersion(db);
    if (version > SCHEMA_VERSION) {
      throw new BackupError(
        `${what} ${path} has schema version ${version}, newer than this control plane's ${SCHEMA_VERSION}: use the Tether version that wrote it`,
      );
    }
    const hasMeta = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").get() !== undefined;
    const epoch = hasMeta ? (db.prepare("SELECT value FROM meta WHERE key = 'epoch'").get() as { value: string } | undefined) : undefined;
    if (epoch === undefined) throw new BackupError(`${what} ${path} is not a Tether store (no epoch)`);
    return db;
  } catch (err) {
    db?.close();
    if (err instanceof BackupError) throw err;
    throw new BackupError(`${what} ${path} is not a readable Tether store: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

function summarize(db: Database.Database, path: string): BackupSummary {
  const count = (sql: string): number => (db.prepare(sql).get() as { n: number }).n;
  return {
    epoch: (db.prepare("SELECT value FROM meta WHERE key = 'epoch'").get() as { value: string }).value,
    bytes: statSync(path).size,
    hosts: count('SELECT count(*) AS n FROM hosts'),
    agents: count('SELECT count(*) AS n FROM agents'),
    pendingMessages: count("SELECT count(*) AS n FROM messages WHERE state = 'pending'"),
  };
}

/**
 * Writes a consistent copy of the store at `dbPath` to `outPath` (a new file,
 * mode 0600: it holds the private signing keys), safe while the control plane
 * runs. The copy is a single self-contained file, checked before this returns.
 */
export function backupDatabase(dbPath: string, outPath: string): BackupSummary {
  const source = openChecked(dbPath, 'the database');
  try {
    try {
      closeSync(openSync(outPath, 'wx', 0o600));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new BackupError(`${outPath} already exists; a backup never overwrites a file`);
      throw err;
    }
    try {
      // Fills the empty 0600 file made above (VACUUM INTO accepts an empty file and keeps its mode).
      source.prepare('VACUUM INTO ?').run(outPath);
      const fd = openSync(outPath, 'r+');
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      rmSync(outPath, { force: true });
      throw err;
    }
  } finally {
    source.close();
  }
  const copy = openChecked(outPath, 'the backup');
  try {
    copy.pragma('journal_mode = DELETE');
    return summarize(copy, outPath);
  } finally {
    copy.close();
  }
}

/**
 * Brings into the restored store the keys of the store it replaces (read raw,
 * whatever its schema): a key the backup lacks is kept verifying-only, with no
 * private half and its verify-until left for the key ring to fix if it had none
 * (it may have signed tokens up to now); a key revoked since the backup stays
 * revoked, even if the backup has it signing. Returns how many keys were added.
 */
function mergeKeptKeys(db: Database.Database, keptKeys: unknown[], nowMs: number): number {
  const insert = db.prepare(
    `INSERT OR IGNORE INTO signing_keys (kid, purpose, state, private_jwk, public_jwk, created_at_ms, signing_since_ms, retired_at_ms, verify_until_ms)
     VALUES (@kid, @purpose, @state, NULL, @public_jwk, @created_at_ms, @signing_since_ms, @retired_at_ms, @verify_until_ms)`,
  );
  const revoke = db.prepare(
    "UPDATE signing_keys SET state = 'revoked', private_jwk = NULL, retired_at_ms = COALESCE(retired_at_ms, @retired_at_ms), verify_until_ms = @verify_until_ms WHERE kid = @kid",
  );
  let kept = 0;
  for (const raw of keptKeys) {
    const row = raw as Record<string, unknown>;
    if (typeof row.kid !== 'string' || typeof row.public_jwk !== 'string') continue;
    const state = typeof row.state === 'string' ? row.state : row.retired_at_ms === null ? 'signing' : 'verifying-only';
    const isRevoked = state === 'revoked';
    const isRetired = isRevoked || state === 'verifying-only';
    const values = {
      kid: row.kid,
      purpose: typeof row.purpose === 'string' ? row.purpose : 'tokens',
      state: isRevoked ? 'revoked' : 'verifying-only',
      public_jwk: row.public_jwk,
      created_at_ms: row.created_at_ms,
      signing_since_ms: row.signing_since_ms ?? (state === 'standby' ? null : row.created_at_ms),
      retired_at_ms: isRetired ? (row.retired_at_ms ?? nowMs) : nowMs,
      verify_until_ms: isRetired ? (row.verify_until_ms ?? null) : null,
    };
    const added = insert.run(values).changes;
    kept += added;
    if (added === 0 && isRevoked) revoke.run(values);
  }
  return kept;
}

/**
 * Brings into the restored store the admin tokens of the store it replaces:
 * each one the backup lacks, as it is; each one retired there, retired here.
 * Returns how many rows changed.
 */
function mergeKeptAdminTokens(db: Database.Database, keptTokens: unknown[]): number {
  const insert = db.prepare(
    `INSERT OR IGNORE INTO admin_tokens (token_id, name, role, secret_hash, created_at_ms, created_by, retired_at_ms)
     VALUES (@token_id, @name, @role, @secret_hash, @created_at_ms, @created_by, @retired_at_ms)`,
  );
  const retire = db.prepare('UPDATE admin_tokens SET retired_at_ms = @retired_at_ms WHERE token_id = @token_id AND retired_at_ms IS NULL');
  let changed = 0;
  for (const raw of keptTokens) {
    const row = raw as Record<string, unknown>;
    if (typeof row.token_id !== 'string' || typeof row.secret_hash !== 'string') continue;
    const added = insert.run(row).changes;
    changed += added;
    if (added === 0 && typeof row.retired_at_ms === 'number') changed += retire.run(row).changes;
  }
  return changed;
}

/** Bytes copied at a time from a backup into the staging file. */
const COPY_CHUNK_BYTES = 1 << 20;

/**
 * Copies `fromPath` into `toPath`, a new file created 0600 from the start: it
 * holds the private signing keys, so it is never, even for a moment, as wide
 * as the backup's mode (`copyFileSync` gives the copy the source's mode, which
 * a later chmod only narrowed). Synced before it returns.
 */
function copyToPrivateFile(fromPath: string, toPath: string): void {
  const source = openSync(fromPath, 'r');
  try {
    const target = openSync(toPath, 'wx', 0o600);
    try {
      const sizeBytes = fstatSync(source).size;
      const buffer = Buffer.allocUnsafe(Math.min(COPY_CHUNK_BYTES, Math.max(sizeBytes, 1)));
      let position = 0;
      // Bounded by the size read above: a backup is not written to while it is restored.
      while (position < sizeBytes) {
        const read = readSync(source, buffer, 0, Math.min(buffer.length, sizeBytes - position), position);
        if (read === 0) throw new BackupError(`the backup ${fromPath} shrank while it was copied`);
        for (let written = 0; written < read; ) {
          const count = writeSync(target, buffer, written, read - written, position + written);
          if (count === 0) throw new BackupError(`nothing could be written to ${toPath}`);
          written += count;
        }
        position += read;
      }
      fsyncSync(target);
    } finally {
      closeSync(target);
    }
  } finally {
    closeSync(source);
  }
}

/** Options of {@link restoreDatabase}. */
export interface RestoreOptions {
  /**
   * Called once the backup's bytes are in the staging file, before anything
   * opens it: where a test checks the file was never wider than 0600.
   * @internal
   */
  onStaged?: (stagingPath: string) => void;
}

/**
 * Replaces the store at `dbPath` with the backup at `fromPath` and starts a new
 * epoch (see the module comment). Refuses while a control plane serves
 * `dbPath`. The replaced database is moved aside, not deleted; `nowMs` names it.
 */
export function restoreDatabase(dbPath: string, fromPath: string, nowMs: number, options: RestoreOptions = {}): RestoreSummary {
  const pid = runningPid(dbPath);
  if (pid !== undefined && pid !== process.pid) {
    throw new BackupError(`a control plane (pid ${pid}) serves ${dbPath}: stop it first (if none runs, remove ${pidFilePath(dbPath)})`);
  }
  const backup = openChecked(fromPath, 'the backup');
  const previousSchemaVersion = schemaVersion(backup);
  backup.close();

  // Keys made after the backup live only in the database being replaced: keep them, if it can be read.
  let keptKeys: unknown[] = [];
  let keptTokens: unknown[] = [];
  if (existsSync(dbPath)) {
    try {
      const replaced = new Database(dbPath, { fileMustExist: true });
      try {
        keptKeys = replaced.prepare('SELECT * FROM signing_keys').all();
        // A store older than admin tokens has none to keep.
        const hasTokens = replaced.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'admin_tokens'").get() !== undefined;
        keptTokens = hasTokens ? replaced.prepare('SELECT * FROM admin_tokens').all() : [];
      } finally {
        replaced.close();
      }
    } catch {
      // A damaged or foreign file: restoring is how one gets past it; its keys are lost with it.
      keptKeys = [];
      keptTokens = [];
    }
  }

  // A new machine after a lost disk has no data directory yet.
  mkdirSync(dirname(dbPath), { recursive: true, mode: 0o700 });
  const stagingPath = `${dbPath}.restoring`;
  for (const suffix of ['', '-wal', '-shm']) rmSync(`${stagingPath}${suffix}`, { force: true });
  copyToPrivateFile(fromPath, stagingPath);
  options.onStaged?.(stagingPath);

  const db = new Database(stagingPath, { fileMustExist: true });
  let changes: Pick<RestoreSummary, 'previousEpoch' | 'joinTokensBurnt' | 'signingKeysKept' | 'adminTokensCarried'>;
  let summary: BackupSummary;
  try {
    // The same migration every open runs: an older backup's schema is brought up to date here, in one transaction.
    migrate(db);
    changes = db.transaction(() => {
      const previousEpoch = (db.prepare("SELECT value FROM meta WHERE key = 'epoch'").get() as { value: string }).value;
      db.prepare("UPDATE meta SET value = ? WHERE key = 'epoch'").run(randomUUID());
      db.prepare('UPDATE agents SET generation = generation + ?').run(RESTORE_GENERATION_GAP);
      db.prepare('UPDATE hosts SET credential_generation = credential_generation + ?').run(RESTORE_GENERATION_GAP);
      const joinTokensBurnt = db
        .prepare('UPDATE hosts SET join_secret_hash = NULL, join_lease_session_id = NULL WHERE join_secret_hash IS NOT NULL')
        .run().changes;
      const signingKeysKept = mergeKeptKeys(db, keptKeys, nowMs);
      const adminTokensCarried = mergeKeptAdminTokens(db, keptTokens);
      return { previousEpoch, joinTokensBurnt, signingKeysKept, adminTokensCarried };
    })();
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.pragma('journal_mode = DELETE');
    // One self-contained file from here on: its size is final.
    summary = summarize(db, stagingPath);
  } finally {
    db.close();
  }

  let replacedPath: string | undefined;
  if (existsSync(dbPath)) {
    replacedPath = `${dbPath}.replaced-${new Date(nowMs).toISOString().replaceAll(':', '')}`;
    renameSync(dbPath, replacedPath);
    for (const suffix of ['-wal', '-shm']) {
      if (existsSync(`${dbPath}${suffix}`)) renameSync(`${dbPath}${suffix}`, `${replacedPath}${suffix}`);
    }
  }
  renameSync(stagingPath, dbPath);
  return { ...summary, ...changes, replacedPath, previousSchemaVersion };
}
