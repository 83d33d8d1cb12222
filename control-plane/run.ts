import { controlPlaneProgram } from './main.js';

/** The `control-plane` binary: parses argv and runs; a failure is one line on stderr and exit status 1. */
export async function runControlPlane(argv: string[]): Promise<void> {
  try {
    await controlPlaneProgram().parseAsync(argv);
  } catch (err) {
    console.error(`control-plane: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  }
}
