import { readFileSync } from 'node:fs';
import { InvalidArgumentError as CommanderInvalidArgument } from 'commander';
import ms from 'ms';
import type { Label } from '../gen/tether/v1/common.js';

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
 * Reads a secret from a file (trimmed) if a path is given, otherwise from an
 * environment variable. Secrets never come from argv, where `ps` shows them.
 */
export function readSecret(file: string | undefined, envName: string): string | undefined {
  if (file !== undefined && file !== '') {
    const secret = readFileSync(file, 'utf8').trim();
    if (secret === '') throw new Error(`${file} is empty`);
    return secret;
  }
  const fromEnv = process.env[envName];
  return fromEnv === undefined || fromEnv === '' ? undefined : fromEnv;
}
