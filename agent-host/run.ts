import { SecretRedactor, safeMessage } from '../common/secrets.js';
import { agentHostProgram } from './main.js';

/**
 * The `agent-host` binary: parses argv and runs; a failure is one line on
 * stderr and exit status 1, filtered of every secret the process read and of
 * anything secret-looking (a library's message may quote a header value).
 */
export async function runAgentHost(argv: string[]): Promise<void> {
  const redactor = new SecretRedactor();
  try {
    await agentHostProgram(undefined, redactor).parseAsync(argv);
  } catch (err) {
    console.error(`agent-host: ${safeMessage(err, redactor)}`);
    process.exitCode = 1;
  }
}
