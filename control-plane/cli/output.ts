/**
 * How the admin commands print what they get: one convention for all of them
 * (`-o table|wide|json|jsonl`), one rendering of states (lowercase words) and
 * times (ISO 8601 in JSON; ISO and relative in tables).
 */
import { Option, type Command } from 'commander';
import ms from 'ms';
import { SystemClock } from '../../common/clock.js';
import { AgentState } from '../../gen/tether/v1/common.js';

/** The clock relative times are told against. */
const CLOCK = new SystemClock();

/** What `-o` takes. */
export const OUTPUT_FORMATS = ['table', 'wide', 'json', 'jsonl'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** Adds `-o, --output <format>` to `command`; `isList` only changes the help text (`help` replaces it). */
export function addOutputOption(command: Command, isList: boolean, help?: string): Command {
  const text = help ?? (isList
    ? 'table (default), wide (more columns), json (one document: an array) or jsonl (one object a line)'
    : 'table (default: one field a line), wide (as table), json (one document) or jsonl (the same on one line)');
  return command.addOption(new Option('-o, --output <format>', text).choices(OUTPUT_FORMATS).default('table'));
}

/** An agent state as one lowercase word (`running`), `null` for none. */
export function agentStateWord(state: AgentState): string | null {
  if (state === AgentState.AGENT_STATE_UNSPECIFIED || AgentState[state] === undefined) return null;
  return AgentState[state].replace('AGENT_STATE_', '').toLowerCase();
}

/** `3m ago`, `in 40s`, `now`: `atMs` against `nowMs`. */
export function relativeTime(atMs: number, nowMs: number): string {
  const delta = atMs - nowMs;
  if (Math.abs(delta) < 1_000) return 'now';
  const amount = ms(Math.abs(delta));
  return delta < 0 ? `${amount} ago` : `in ${amount}`;
}

/** A time in a table: ISO 8601 and relative (`2026-01-01T10:00:00.000Z (3m ago)`), `-` for none (0). */
export function timeCell(atMs: number, nowMs = CLOCK.now()): string {
  return atMs === 0 ? '-' : `${new Date(atMs).toISOString()} (${relativeTime(atMs, nowMs)})`;
}

/** A time in JSON: ISO 8601, `null` for none (0). */
export function isoOrNull(atMs: number): string | null {
  return atMs === 0 ? null : new Date(atMs).toISOString();
}

/** Fields of the API's messages that hold a point in time (milliseconds since the epoch); durations (`clockSkewMs`) are not. */
const TIME_FIELD = /^(at|lastHeartbeat|lastSeen)Ms$|(At|Since|Until)Ms$/;
/** Fields that hold an agent state enum. */
const AGENT_STATE_FIELDS: readonly string[] = ['state', 'fromState', 'toState'];

/**
 * A message of the API as the CLI prints it in JSON: every field (defaults
 * included), agent states as words, times as ISO 8601 under the field's name
 * without `Ms` (`createdAtMs` → `createdAt`), `null` for none; bytes as base64.
 */
export function cliJson(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(cliJson);
  if (value instanceof Uint8Array) return Buffer.from(value).toString('base64');
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(value as Record<string, unknown>)) {
    if (field === undefined) continue;
    if (TIME_FIELD.test(key) && typeof field === 'number') out[key.slice(0, -2)] = isoOrNull(field);
    else if (AGENT_STATE_FIELDS.includes(key) && typeof field === 'number') out[key] = agentStateWord(field);
    else out[key] = cliJson(field);
  }
  return out;
}

/** Prints rows as aligned columns (the first row is the header). */
export function printTable(rows: readonly (readonly string[])[]): void {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? '').length))) ?? [];
  for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd());
}

/** A column of a list: its header, its cell, and whether only `-o wide` shows it. */
export interface Column<T> {
  header: string;
  cell: (item: T) => string;
  isWide?: boolean;
}

/** Prints a list in `format`: a table (wide: every column), one JSON array, or one JSON object a line. */
export function printList<T>(format: OutputFormat, items: readonly T[], columns: readonly Column<T>[], json: (item: T) => unknown = cliJson): void {
  if (format === 'json') {
    console.log(JSON.stringify(items.map(json), null, 2));
    return;
  }
  if (format === 'jsonl') {
    for (const item of items) console.log(JSON.stringify(json(item)));
    return;
  }
  const shown = columns.filter((column) => format === 'wide' || column.isWide !== true);
  printTable([shown.map((column) => column.header), ...items.map((item) => shown.map((column) => column.cell(item)))]);
}

/** Prints one result in `format`: `FIELD  value` lines (the fields of `json`, or `rows` if given), or the JSON document. */
export function printObject(format: OutputFormat, json: Record<string, unknown>, rows?: readonly (readonly [string, string])[]): void {
  if (format === 'json') {
    console.log(JSON.stringify(json, null, 2));
    return;
  }
  if (format === 'jsonl') {
    console.log(JSON.stringify(json));
    return;
  }
  printTable(rows ?? Object.entries(json).map(([key, value]) => [fieldHeader(key), plainCell(value)]));
}

/** `agentsMoved` → `AGENTS_MOVED`. */
function fieldHeader(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

/** A JSON value in a table cell: `-` for none, ISO times with their relative time. */
function plainCell(value: unknown): string {
  if (value === null || value === undefined || value === '') return '-';
  if (typeof value === 'string' && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(value)) return timeCell(Date.parse(value));
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return JSON.stringify(value);
}

/** `a=1,b=2`, or `-`. */
export function labelsCell(labels: readonly { key: string; value: string }[]): string {
  return labels.length === 0 ? '-' : labels.map((l) => `${l.key}=${l.value}`).join(',');
}
