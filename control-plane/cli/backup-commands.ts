import type { Command } from 'commander';
import { SystemClock } from '../../common/clock.js';
import { backupDatabase, restoreDatabase, RESTORE_GENERATION_GAP } from '../store/sqlite-backup.js';
import { PostgresStore } from '../store/postgres-store.js';
import { isPostgresUrl } from '../store/postgres-url.js';
import { SCHEMA_VERSION } from '../store/sqlite-schema.js';
import { databasePath } from '../store/sqlite-store.js';

/**
 * Adds `backup` and `restore`, which work on the data directory's store file, not over gRPC,
 * and `new-epoch`, a PostgreSQL store's step after a restore with pg_restore.
 */
export function addBackupCommands(program: Command): void {
  program
    .command('backup')
    .description('write a consistent copy of the store in --data-dir to a new file (safe while the control plane runs)')
    .requiredOption('--out <file>', 'the backup file to create (never overwritten; mode 0600, as it holds the signing keys)')
    .action((flags: { out: string }, command: Command) => {
      const { dataDir } = command.optsWithGlobals<{ dataDir: string }>();
      const summary = backupDatabase(databasePath(dataDir), flags.out);
      console.log(
        `backed up ${summary.hosts} hosts, ${summary.agents} agents, ${summary.pendingMessages} pending messages ` +
          `(epoch ${summary.epoch}, ${summary.bytes} bytes) to ${flags.out}`,
      );
    });
  program
    .command('restore')
    .description(
      'replace the store in --data-dir with a backup, with the control plane stopped. The restored store starts a new epoch: ' +
        'hosts keep their credentials, every agent is started again under a new incarnation with a new credential, ' +
        'messages not acknowledged at backup time are delivered again (at least once, in order), messages sent after ' +
        'the backup are gone, and unused join tokens are burnt. The replaced store is kept beside it.',
    )
    .requiredOption('--from <file>', 'the backup file (from `control-plane backup`)')
    .action((flags: { from: string }, command: Command) => {
      const { dataDir } = command.optsWithGlobals<{ dataDir: string }>();
      const summary = restoreDatabase(databasePath(dataDir), flags.from, new SystemClock().now());
      console.log(`restored ${summary.hosts} hosts, ${summary.agents} agents, ${summary.pendingMessages} pending messages from ${flags.from}`);
      console.log(`epoch ${summary.previousEpoch} -> ${summary.epoch}; generations advanced by ${RESTORE_GENERATION_GAP}`);
      if (summary.previousSchemaVersion < SCHEMA_VERSION) {
        console.log(`migrated the backup's schema from version ${summary.previousSchemaVersion} to ${SCHEMA_VERSION}`);
      }
      if (summary.signingKeysKept > 0) console.log(`kept ${summary.signingKeysKept} signing keys made after the backup`);
      if (summary.adminTokensCarried > 0) console.log(`kept ${summary.adminTokensCarried} admin tokens added or retired after the backup as they are now`);
      if (summary.joinTokensBurnt > 0) console.log(`burnt ${summary.joinTokensBurnt} unused join tokens: enroll those hosts again`);
      if (summary.replacedPath !== undefined) console.log(`the replaced store is kept at ${summary.replacedPath}`);
    });
  program
    .command('new-epoch')
    .description(
      'PostgreSQL store: after restoring it with pg_restore (or failing PostgreSQL over to a replica that may have lost commits), ' +
        'with every control plane stopped, start a new history as `restore` does for SQLite: a new epoch, every agent and host ' +
        'generation advanced past any the lost history reached, unused join tokens burnt. Back up with pg_dump.',
    )
    .requiredOption('--store <postgres://…>', 'the PostgreSQL store (the connection string serve --store was given)')
    .action(async (flags: { store: string }) => {
      if (!isPostgresUrl(flags.store)) throw new Error('--store must be a postgres:// connection string (for the embedded store, `restore` starts the new epoch)');
      const store = await PostgresStore.open(flags.store, { poolSize: 1 });
      try {
        const summary = await store.startNewEpoch();
        console.log(`epoch ${summary.previousEpoch} -> ${summary.epoch}; generations of ${summary.agents} agents and ${summary.hosts} hosts advanced by ${RESTORE_GENERATION_GAP}`);
        if (summary.joinTokensBurnt > 0) console.log(`burnt ${summary.joinTokensBurnt} unused join tokens: enroll those hosts again`);
      } finally {
        await store.close();
      }
    });
}
