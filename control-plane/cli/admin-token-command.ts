import type { Command } from 'commander';
import { SecretOutputFile } from './secret-output-file.js';
import { newAdminToken } from './serve-command.js';

/** Adds `generate-admin-token`: a new random admin token for `--admin-token-file`, printed or written to a new 0600 file. */
export function addAdminTokenCommand(program: Command): void {
  program
    .command('generate-admin-token')
    .description('generate a random admin token (32 bytes, base64url) for --admin-token-file; printed, or written to --token-file')
    .option('--token-file <file>', 'write it to this new file, created 0600 (an existing path or a symbolic link is refused), and print nothing')
    .action((flags: { tokenFile?: string }) => {
      if (flags.tokenFile === undefined) {
        console.log(newAdminToken());
        return;
      }
      const output = SecretOutputFile.open(flags.tokenFile);
      try {
        output.write(newAdminToken());
      } finally {
        output.discard();
      }
    });
}
