import { createLogger, type Logger } from '../../common/logger.js';

/** Collects every log line (debug level and up) a test produces, for assertions about secrets. */
export class LogCapture {
  readonly lines: string[] = [];
  readonly logger: Logger;

  constructor(level: 'debug' | 'info' | 'trace' = 'debug') {
    this.logger = createLogger({ level, destination: { write: (line: string) => void this.lines.push(line) } });
  }

  /** Every captured line, joined. */
  text(): string {
    return this.lines.join('');
  }

  /** Parsed lines. */
  records(): Record<string, unknown>[] {
    return this.lines.map((line) => JSON.parse(line) as Record<string, unknown>);
  }
}
