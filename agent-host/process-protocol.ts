/**
 * The line protocol between a host and a process agent: NDJSON both ways.
 * Host → child (stdin): one delivered message per line, with its `seq`; or a
 * liveness probe `{"ping":N}`, which the child answers `{"pong":N}`.
 * Child → host (stdout): `{"ack":SEQ}`, `{"nack":SEQ,"error":"..."}` or
 * `{"pong":N}`; any other line is the agent's own output, logged and never
 * taken for an ack.
 * Pure functions and one small bounded splitter; no I/O here.
 */
import type { DeliveredMessage } from './tools/agent-module.js';

/** What the child said about one message. */
export type ControlLine = { type: 'ack'; seq: number } | { type: 'nack'; seq: number; error: string } | { type: 'pong'; ping: number };

/** A liveness probe as the line written to the child's stdin; the child answers `{"pong":N}` with the same N. */
export function encodePingLine(ping: number): string {
  return `${JSON.stringify({ ping })}\n`;
}

/** Longest nack error kept (characters); the rest is cut. */
export const MAX_NACK_ERROR_CHARS = 512;

/**
 * Anything that looks like a JWS: a base64url run starting `eyJ` (`{"` encoded)
 * and every dot-separated segment after it. Broader than a complete token on
 * purpose, so a token cut by a line bound is still caught.
 */
const JWT_LIKE = /eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)*/g;

/** `text` with anything JWT-shaped replaced: the child's output may hold its token by accident. */
export function redactJwts(text: string): string {
  return text.replace(JWT_LIKE, '[redacted-jwt]');
}

/** One message as the NDJSON line written to the child's stdin (payload in base64). */
export function encodeMessageLine(message: DeliveredMessage): string {
  return `${JSON.stringify({
    seq: message.seq,
    id: message.id,
    from: message.from,
    contentType: message.contentType,
    payload: Buffer.from(message.payload).toString('base64'),
    createdAtMs: message.createdAtMs,
  })}\n`;
}

/**
 * Parses one stdout line as an ack, nack or pong, or returns undefined for
 * anything else. Strict on purpose: an object with exactly `ack` (a positive
 * integer), exactly `pong` (a positive integer), or `nack` and optionally
 * `error` (a string); so a log line that happens to
 * be JSON with an `ack` field among others is never taken for one.
 */
export function parseControlLine(line: string): ControlLine | undefined {
  const trimmed = line.trim();
  if (!trimmed.startsWith('{')) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(trimmed);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return undefined;
  const record = parsed as Record<string, unknown>;
  const keys = Object.keys(record);
  if (keys.length === 1 && isSeq(record.ack)) return { type: 'ack', seq: record.ack };
  if (keys.length === 1 && isSeq(record.pong)) return { type: 'pong', ping: record.pong };
  if (isSeq(record.nack) && keys.every((key) => key === 'nack' || key === 'error')) {
    if (record.error !== undefined && typeof record.error !== 'string') return undefined;
    const error = redactJwts(record.error ?? 'refused by the agent').slice(0, MAX_NACK_ERROR_CHARS);
    return { type: 'nack', seq: record.nack, error: error === '' ? 'refused by the agent' : error };
  }
  return undefined;
}

function isSeq(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

/** A line out of {@link LineSplitter}. */
export interface SplitLine {
  text: string;
  /** The line was longer than the bound; `text` is its beginning only. */
  isTruncated: boolean;
}

/**
 * Splits a character stream into lines, holding at most `maxChars` of the
 * current line: a child that writes a huge line (or never a newline) costs
 * the host a bounded amount of memory.
 */
export class LineSplitter {
  readonly #maxChars: number;
  #current = '';
  #isTruncated = false;

  constructor(maxChars: number) {
    this.#maxChars = maxChars;
  }

  /** Feeds text; returns the lines it completed. */
  push(text: string): SplitLine[] {
    const lines: SplitLine[] = [];
    let start = 0;
    for (;;) {
      const newline = text.indexOf('\n', start);
      const piece = text.slice(start, newline === -1 ? text.length : newline);
      this.#append(piece);
      if (newline === -1) break;
      lines.push(this.#take());
      start = newline + 1;
    }
    return lines;
  }

  /** The unterminated last line, if any (at end of stream). */
  flush(): SplitLine | undefined {
    if (this.#current === '' && !this.#isTruncated) return undefined;
    return this.#take();
  }

  #append(piece: string): void {
    const room = this.#maxChars - this.#current.length;
    if (piece.length > room) {
      this.#current += piece.slice(0, Math.max(0, room));
      this.#isTruncated = true;
    } else {
      this.#current += piece;
    }
  }

  #take(): SplitLine {
    const line = { text: this.#current.endsWith('\r') ? this.#current.slice(0, -1) : this.#current, isTruncated: this.#isTruncated };
    this.#current = '';
    this.#isTruncated = false;
    return line;
  }
}
