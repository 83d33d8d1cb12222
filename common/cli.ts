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

/** Parses a non-negative integer flag for commander. */
export function parseCount(value: string): number {
  if (!/^\d+$/.test(value)) throw new CommanderInvalidArgument(`not a whole number: ${value}`);
  return Number(value);
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
