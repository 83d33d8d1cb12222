import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError as CommanderInvalidArgument, type Command, type Option } from 'commander';
import ms from 'ms';
import type { Label } from '../gen/tether/v1/common.js';
import { parseSecret, type SecretRedactor } from './secrets.js';
import { parseServerAddresses } from './server-addresses.js';

/** Parses a duration flag ("90s", "1h", "500ms", or plain milliseconds) for commander. */
export function parseDurationMs(value: string): number {
  const parsed = /^\d+$/.test(value) ? Number(value) : ms(value as ms.StringValue);
  if (typeof parsed !== 'number' || !Number.isFinite(parsed) || parsed < 0) {
    throw new CommanderInvalidArgument(`not a duration: ${value} (try 30s, 5m, 1h)`);
  }
  return parsed;
}

/** The lowest and highest value a duration flag takes, in milliseconds. */
export interface DurationBounds {
  minMs: number;
  maxMs: number;
}

/** A handler deadline, the host's `--handler-deadline` or an agent's own (0: none): up to 7 days. */
export const HANDLER_DEADLINE_BOUNDS: DurationBounds = { minMs: 0, maxMs: 7 * 24 * 3_600_000 };

/** `90000` → `1m 30s`, `259200000` → `3d`: how a bound is shown in an error. */
function formatDuration(valueMs: number): string {
  if (valueMs === 0) return '0';
  const units: [string, number][] = [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1_000], ['ms', 1]];
  const parts: string[] = [];
  let left = valueMs;
  for (const [unit, size] of units) {
    const whole = Math.floor(left / size);
    if (whole > 0) parts.push(`${whole}${unit}`);
    left -= whole * size;
  }
  return parts.join(' ');
}

/**
 * A commander parser for the duration flag `flag` that refuses a value outside
 * `bounds` with an error naming the flag and the range. Every duration flag
 * has a ceiling: a wait that long is a typo, and one past what a timer can
 * hold used to fire at once.
 */
export function parseDurationWithin(flag: string, bounds: DurationBounds): (value: string) => number {
  return (value) => {
    const parsed = parseDurationMs(value);
    if (parsed < bounds.minMs || parsed > bounds.maxMs) {
      throw new CommanderInvalidArgument(`${flag} must be from ${formatDuration(bounds.minMs)} to ${formatDuration(bounds.maxMs)}, got ${value}`);
    }
    return parsed;
  };
}

/** A commander parser for the whole-number flag `flag` that refuses a value outside [min, max] with an error naming the flag. */
export function parseCountWithin(flag: string, min: number, max: number): (value: string) => number {
  return (value) => {
    const parsed = parseCount(value);
    if (parsed < min || parsed > max) throw new CommanderInvalidArgument(`${flag} must be from ${min} to ${max}, got ${value}`);
    return parsed;
  };
}

/**
 * A commander parser for `--server`: one control-plane address or several
 * comma-separated (`a:7443,b:7443`); an empty or malformed entry is refused
 * with an error naming it. Gives the list back with spaces dropped.
 */
export function parseServerList(value: string): string {
  try {
    return parseServerAddresses(value).join(',');
  } catch (err) {
    throw new CommanderInvalidArgument(`--server: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Parses a non-negative integer flag for commander. */
export function parseCount(value: string): number {
  if (!/^\d+$/.test(value)) throw new CommanderInvalidArgument(`not a whole number: ${value}`);
  return Number(value);
}

/** A whole number above 0, or the word `auto`. */
export function parseCountOrAuto(value: string): number | 'auto' {
  if (value.trim().toLowerCase() === 'auto') return 'auto';
  const count = parseCount(value);
  if (count < 1) throw new CommanderInvalidArgument(`not "auto" or a whole number above 0: ${value}`);
  return count;
}

/** Collects `key=value` labels from a repeated flag. */
export function collectLabel(value: string, previous: Label[] = []): Label[] {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new CommanderInvalidArgument(`a label is key=value, got ${value}`);
  return [...previous, { key: value.slice(0, eq), value: value.slice(eq + 1) }];
}

/** Collects a repeated string flag. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/**
 * Reads a secret from a file if a path is given, otherwise from an environment
 * variable; checked by {@link parseSecret} (surrounding whitespace trimmed, one
 * line of token characters, else an error naming the file or variable and what
 * is wrong, never the value). Whatever is read is registered with `redactor`
 * first, so no later message can show it. Secrets never come from argv, where
 * `ps` shows them.
 */
export function readSecret(file: string | undefined, envName: string, redactor?: SecretRedactor): string | undefined {
  if (file !== undefined && file !== '') {
    const raw = readFileSync(file, 'utf8');
    redactor?.register(raw);
    return parseSecret(raw, file);
  }
  const fromEnv = process.env[envName];
  if (fromEnv === undefined || fromEnv === '') return undefined;
  redactor?.register(fromEnv);
  return parseSecret(fromEnv, `$${envName}`);
}

/** Words a boolean environment variable may hold, compared case-insensitively. */
const TRUE_WORDS: readonly string[] = ['true', '1', 'yes'];
const FALSE_WORDS: readonly string[] = ['false', '0', 'no'];

/**
 * Parses the boolean environment variable `name`: `true`, `1`, `yes` or
 * `false`, `0`, `no` (any case); the empty string reads as unset, so false,
 * as it does for every other variable here. Anything else is refused, naming
 * the variable (never echoing the value: a misplaced secret must not reach
 * stderr). Returns undefined when the variable is unset or empty.
 */
export function parseBooleanEnv(name: string, value: string | undefined): boolean | undefined {
  if (value === undefined || value === '') return undefined;
  const word = value.toLowerCase();
  if (TRUE_WORDS.includes(word)) return true;
  if (FALSE_WORDS.includes(word)) return false;
  throw new CommanderInvalidArgument(`${name} must be one of ${[...TRUE_WORDS, ...FALSE_WORDS].join(', ')} (or empty, for false)`);
}

/** Every option `command` takes, its own and its ancestors' (the global options). */
function optionsInScope(command: Command): { owner: Command; option: Option }[] {
  const found: { owner: Command; option: Option }[] = [];
  for (let owner: Command | null = command; owner !== null; owner = owner.parent) {
    for (const option of owner.options) found.push({ owner, option });
  }
  return found;
}

/**
 * Makes every boolean option of `program` and its subcommands that has an
 * environment variable read that variable strictly ({@link parseBooleanEnv}).
 * commander sets such an option whenever its variable is set, whatever it
 * holds: `TETHER_INSECURE=false` meant `--insecure`. The check runs before any
 * action, for the options in the action's scope; a malformed variable is
 * refused even when the flag is also given on the command line. A negated
 * option (`--no-x`) with a variable is refused here, as nothing parses it.
 */
export function parseBooleanEnvStrictly(program: Command): Command {
  return program.hook('preAction', (_hooked, actionCommand) => {
    for (const { owner, option } of optionsInScope(actionCommand)) {
      if (option.envVar === undefined) continue;
      if (option.negate) throw new Error(`${option.long ?? option.flags}: a negated option cannot take ${option.envVar}`);
      if (!option.isBoolean()) continue;
      let parsed: boolean | undefined;
      try {
        parsed = parseBooleanEnv(option.envVar, process.env[option.envVar]);
      } catch (err) {
        actionCommand.error(`error: ${(err as Error).message}`, { code: 'tether.invalidBooleanEnv' });
      }
      const key = option.attributeName();
      // Only a value commander took from the environment is replaced; the command line wins.
      if (owner.getOptionValueSource(key) === 'env') owner.setOptionValueWithSource(key, parsed === true, 'env');
    }
  });
}

/**
 * Exit statuses of the command-line tools, one meaning each (documented in
 * `--help` and the README): the way a script tells "no such thing" from "the
 * control plane said no" from "cannot reach it".
 */
export const EXIT = {
  /** It did what was asked. */
  ok: 0,
  /** It failed: the control plane could not be reached or answered with an error, a file could not be read… */
  failure: 1,
  /** The command line is wrong: an unknown command or flag, a bad value, a missing argument or token. */
  usage: 2,
  /** What it names does not exist (NOT_FOUND): an agent, host, key, message. */
  notFound: 3,
  /** The control plane refused: the credential (UNAUTHENTICATED, PERMISSION_DENIED) or the state of things (FAILED_PRECONDITION, ALREADY_EXISTS). */
  refused: 4,
  /** It was started but did not finish: `hosts drain` left agents blocked (the drain goes on in the control plane). */
  unfinished: 5,
} as const;

/** The exit statuses as `--help` shows them. */
export const EXIT_STATUS_HELP = [
  'Exit status:',
  '  0  ok',
  '  1  failure (cannot reach the control plane, an error it answered, a file)',
  '  2  usage (unknown command or flag, bad value, missing argument or admin token; INVALID_ARGUMENT)',
  '  3  not found (NOT_FOUND: no such agent, host, key or message)',
  '  4  refused (UNAUTHENTICATED or PERMISSION_DENIED: the token; FAILED_PRECONDITION or ALREADY_EXISTS: the state of things)',
  '  5  unfinished (hosts drain left agents blocked; the drain goes on)',
].join('\n');

/** A failure whose exit status is known: a usage error (2), something not found (3)… */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** A wrong command line found by the action itself (two flags that exclude each other): exit status 2. */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, EXIT.usage);
    this.name = 'UsageError';
  }
}

/** The exit status for a gRPC status code (see {@link EXIT}). */
export function exitCodeForStatus(code: grpc.status): number {
  switch (code) {
    case grpc.status.OK:
      return EXIT.ok;
    case grpc.status.NOT_FOUND:
      return EXIT.notFound;
    case grpc.status.INVALID_ARGUMENT:
    case grpc.status.OUT_OF_RANGE:
      return EXIT.usage;
    case grpc.status.UNAUTHENTICATED:
    case grpc.status.PERMISSION_DENIED:
    case grpc.status.FAILED_PRECONDITION:
    case grpc.status.ALREADY_EXISTS:
      return EXIT.refused;
    default:
      return EXIT.failure;
  }
}

/**
 * What Node's TLS said when it refused the server's certificate, out of
 * grpc-js's transport detail ("No connection established. Last error: Error:
 * self-signed certificate (…)"), or undefined if the failure was not that.
 */
function tlsFailureOf(details: string): string | undefined {
  const match = /(self[- ]signed certificate[^(.;]*|unable to (?:verify|get)[^(.;]*certificate[^(.;]*|certificate has expired|Hostname\/IP does not match certificate's altnames[^(.;]*|certificate (?:signature failure|is not yet valid))/i.exec(details);
  return match?.[1]?.trim();
}

/**
 * One line saying what a gRPC failure means and what to do about it, without
 * grpc-js's transport detail ("No connection established. Last error: …").
 * `server` is the address called; `details` must already be redacted.
 */
export function describeStatus(code: grpc.status, details: string, server: string): string {
  switch (code) {
    case grpc.status.UNAVAILABLE: {
      const tlsFailure = tlsFailureOf(details);
      if (tlsFailure !== undefined) return `the control plane at ${server} presented a certificate the CA in --ca-file does not verify (${tlsFailure}): check --ca-file / TETHER_CA_FILE`;
      return `cannot reach the control plane at ${server} (is it running? check --server / TETHER_SERVER, and --ca-file for TLS)`;
    }
    case grpc.status.DEADLINE_EXCEEDED:
      return `the control plane at ${server} did not answer in time (is it overloaded? try again)`;
    case grpc.status.UNAUTHENTICATED:
      return `the control plane refused the admin token${details === '' ? '' : ` (${details})`}: check --admin-token-file / TETHER_ADMIN_TOKEN_FILE / TETHER_ADMIN_TOKEN`;
    case grpc.status.PERMISSION_DENIED:
      return `permission denied: ${details}`;
    case grpc.status.NOT_FOUND:
      return `not found: ${details}`;
    case grpc.status.FAILED_PRECONDITION:
    case grpc.status.ALREADY_EXISTS:
      return `refused: ${details}`;
    case grpc.status.INVALID_ARGUMENT:
    case grpc.status.OUT_OF_RANGE:
      return `invalid request: ${details}`;
    case grpc.status.RESOURCE_EXHAUSTED:
      return `the control plane is at a limit: ${details}`;
    case grpc.status.UNIMPLEMENTED:
      return `the control plane at ${server} does not offer this call (an older version?)`;
    default:
      return `the control plane failed: ${details === '' ? grpc.status[code] : details}`;
  }
}
