import { CommanderError } from 'commander';
import { CliError, EXIT } from '../common/cli.js';
import { SecretRedactor, safeMessage } from '../common/secrets.js';
import { controlPlaneProgram } from './main.js';

/**
 * The `control-plane` binary: parses argv and runs; a failure is one line on
 * stderr, filtered of every secret the process read and of anything
 * secret-looking (a library's message may quote a header value), and the exit
 * status of `EXIT` in common/cli.ts: 2 for a wrong command line (commander's
 * refusals included), a {@link CliError}'s own, else 1.
 */
export async function runControlPlane(argv: string[]): Promise<void> {
  const redactor = new SecretRedactor();
  const program = controlPlaneProgram({}, redactor);
  const pending = [program];
  for (let command = pending.pop(); command !== undefined; command = pending.pop()) {
    command.exitOverride();
    pending.push(...command.commands);
  }
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander printed the message (and the help) already; --help and --version are exit 0.
      process.exitCode = err.exitCode === 0 ? EXIT.ok : EXIT.usage;
      return;
    }
    console.error(`error: ${safeMessage(err, redactor)}`);
    process.exitCode = err instanceof CliError ? err.exitCode : EXIT.failure;
  }
}
