import { agentHostProgram } from './main.js';

/** The `agent-host` binary: parses argv and runs; a failure is one line on stderr and exit status 1. */
export async function runAgentHost(argv: string[]): Promise<void> {
  try {
    await agentHostProgram().parseAsync(argv);
  } catch (err) {
    console.error(`agent-host: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  }
}
