import { SecretRedactor, safeMessage } from '../common/secrets.js';
import { controlPlaneProgram } from './main.js';

/**
 * The `control-plane` binary: parses argv and runs; a failure is one line on
 * stderr and exit status 1, filtered of every secret the process read and of
 * anything secret-looking (a library's message may quote a header value).
 */
export async function runControlPlane(argv: string[]): Promise<void> {
  const redactor = new SecretRedactor();
  try {
    await controlPlaneProgram({}, redactor).parseAsync(argv);
  } catch (err) {
    console.error(`control-plane: ${safeMessage(err, redactor)}`);
    process.exitCode = 1;
  }
}
