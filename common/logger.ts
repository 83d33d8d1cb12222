import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

/** The logger type every component takes. */
export type { Logger } from 'pino';

/**
 * Paths pino censors. Tokens are never logged on purpose; this catches the
 * accident of logging an object that holds one.
 */
export const REDACT_PATHS: readonly string[] = [
  'authorization',
  'token',
  'credential',
  'privateKey',
  'joinToken',
  'adminToken',
  '*.authorization',
  '*.token',
  '*.credential',
  '*.privateKey',
  '*.joinToken',
  '*.adminToken',
  '*.*.token',
  '*.*.authorization',
];

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  level?: LevelWithSilent;
  /** Where lines go; standard output when absent. */
  destination?: DestinationStream;
  /** Bound into every line, e.g. `{ service: 'control-plane' }`. */
  base?: Record<string, unknown>;
}

/** Builds a root logger: JSON lines, secrets redacted. Only `main` (and tests) call it. */
export function createLogger(options: LoggerOptions = {}): Logger {
  return pino(
    {
      level: options.level ?? 'info',
      base: options.base ?? null,
      redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
      serializers: { err: pino.stdSerializers.err },
    },
    options.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
