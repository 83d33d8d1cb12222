import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';
import { redactSecrets, type SecretRedactor } from './secrets.js';

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
  /** Filters logged errors with the secrets this process read, too; secret-looking patterns are filtered either way. */
  redactor?: SecretRedactor;
}

/** Limits how deep {@link redactStrings} walks a serialized error: errors nest shallowly, a cycle must not hang. */
const MAX_REDACT_DEPTH = 4;

/** `value` with every string in it (to a small depth) passed through `redact`. */
function redactStrings(value: unknown, redact: (text: string) => string, depth = 0): unknown {
  if (typeof value === 'string') return redact(value);
  if (depth >= MAX_REDACT_DEPTH || typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map((item) => redactStrings(item, redact, depth + 1));
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) copy[key] = redactStrings(item, redact, depth + 1);
  return copy;
}

/**
 * pino's error serializer, then every string in the result filtered: a library
 * error (grpc-js quoting a header value, a JSON parser quoting its input) can
 * carry a secret in its message, its stack or a property, and the path-based
 * `redact` cannot see inside a string.
 */
export function errorSerializer(redactor?: SecretRedactor): (err: unknown) => unknown {
  const redact = redactor === undefined ? redactSecrets : (text: string): string => redactor.redact(text);
  return (err) => redactStrings(pino.stdSerializers.err(err as Error), redact);
}

/** Builds a root logger: JSON lines, secrets redacted. Only `main` (and tests) call it. */
export function createLogger(options: LoggerOptions = {}): Logger {
  return pino(
    {
      level: options.level ?? 'info',
      base: options.base ?? null,
      redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
      serializers: { err: errorSerializer(options.redactor) },
    },
    options.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
