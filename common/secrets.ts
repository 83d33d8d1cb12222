/**
 * Secrets as text: checking one where it is read (so a stray character is
 * reported there, by what is wrong, never by echoing it), and scrubbing
 * anything secret-looking out of a message that came from a library before a
 * user or a log sees it.
 *
 * Why both: grpc-js refuses a header value with a character outside printable
 * ASCII by throwing `Metadata string value "<the whole value>" contains illegal
 * characters`, and the value is `Bearer <token>` or `Join <id.secret>`. Checking
 * at read time keeps such a value from ever reaching grpc-js; the filter keeps
 * whatever other library message quotes one from reaching stderr or a log.
 */
import { InvalidSecretError } from './errors.js';

/**
 * RFC 7235 `token68` (what `Bearer` carries per RFC 6750 §2.1): every token
 * Tether issues or expects is one (JWTs, base64url admin and join secrets,
 * `ID.SECRET` join tokens; `base64` output, with `+`, `/` and `=`, too).
 */
const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*$/;

/** Longer than any token Tether issues (the verifier's own limit is 8 KiB). */
export const MAX_SECRET_LENGTH = 8192;

/** What kind of character `char` is, said without showing it. */
function characterClass(char: string): string {
  const code = char.codePointAt(0) ?? 0;
  if (char === ' ') return 'a space';
  if (char === '\t') return 'a tab';
  if (char === '\r') return 'a carriage return';
  if (code < 0x20 || code === 0x7f) return 'a control character';
  if (code > 0x7e) return 'a non-ASCII character';
  return 'a character not allowed in a token';
}

/** "holds more than one line (…)" if more than one line of `text` holds anything, naming the first two (1-based). */
function linesProblem(text: string): string | undefined {
  const filled = text.split('\n').flatMap((line, index) => (line.trim() === '' ? [] : [index + 1]));
  if (filled.length < 2) return undefined;
  return `holds more than one line (line ${filled[0]} and line ${filled[1]}): put the token alone on one line, with no comment`;
}

/**
 * What is wrong with `value` as a token (one line of RFC 7235 token68
 * characters, at most {@link MAX_SECRET_LENGTH}), or undefined if nothing is.
 * The answer names positions (1-based) and kinds of character, never the value.
 */
export function tokenProblem(value: string): string | undefined {
  if (value === '') return 'is empty';
  if (value.length > MAX_SECRET_LENGTH) return `is longer than ${MAX_SECRET_LENGTH} characters`;
  if (TOKEN68.test(value)) return undefined;
  const lines = linesProblem(value);
  if (lines !== undefined) return lines;
  const equals = value.search(/=+[^=]/);
  const bad = [...value].findIndex((char) => !/[A-Za-z0-9\-._~+/=]/.test(char));
  if (bad < 0 && equals >= 0) return `contains "=" inside it (position ${equals + 1}); "=" may only end a token`;
  const char = [...value][bad] ?? '';
  const what = characterClass(char);
  return char === '\r' ? `contains a carriage return (position ${bad + 1})` : `contains ${what} at position ${bad + 1}`;
}

/**
 * The secret in `raw` as read from a file or a variable: surrounding
 * whitespace (a final newline, a CRLF's `\r`, blank lines) trimmed, the rest
 * one line of token characters. Throws {@link InvalidSecretError} saying what
 * is wrong and naming `source` (a path, a variable name), never the value;
 * line numbers count from the top of `raw`.
 */
export function parseSecret(raw: string, source: string): string {
  const lines = linesProblem(raw);
  if (lines !== undefined) throw new InvalidSecretError(`${source} ${lines}`);
  const trimmed = raw.trim();
  const problem = tokenProblem(trimmed);
  if (problem === undefined) return trimmed;
  // One line holds the token; say which, counted in what the operator wrote, when there are several.
  const line = raw.split('\n').findIndex((text) => text.trim() !== '') + 1;
  throw new InvalidSecretError(`${source} ${line > 1 ? `(line ${line}) ` : ''}${problem}`);
}

/** A grpc-js header complaint, quoting the value it refused (greedy: the value may itself contain quotes). */
const QUOTED_METADATA = /(Metadata (?:string |binary )?(?:value|key)) "[\s\S]*" (contains illegal characters)/g;
/** A compact JWS: header.payload[.signature], base64url JSON objects. */
const JWT_PATTERN = /eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?/g;
/**
 * An authorization scheme and the credential after it (8 characters or more, up
 * to a space, a quote or a separator). Case-sensitive, so "join the queue" stays.
 */
const AUTHORIZATION_PATTERN = /\b(Bearer|bearer|Join|Basic)\s+[^\s"',;]{8,}/g;

/**
 * `text` with whatever may carry a secret replaced by `[redacted]`: a value
 * grpc-js quotes in a metadata complaint, anything JWT-shaped, and the
 * credential after `Bearer`, `Join` or `Basic`. For messages from libraries,
 * on their way to stderr or a log.
 */
export function redactSecrets(text: string): string {
  return text
    .replace(QUOTED_METADATA, '$1 [redacted] $2')
    .replace(JWT_PATTERN, '[redacted]')
    .replace(AUTHORIZATION_PATTERN, '$1 [redacted]');
}

/** Registered values shorter than this are not filtered: a short one would cut random words out of messages. */
const MIN_REGISTERED_LENGTH = 8;

/**
 * {@link redactSecrets} plus the secrets a process read itself: each is
 * registered where it is read (valid or not, line by line), and removed
 * verbatim from every message passed through {@link SecretRedactor.redact}.
 * Built in `main`, one per process; never module state.
 */
export class SecretRedactor {
  readonly #secrets = new Set<string>();

  /** Remembers `raw` (and each of its lines) as secret. */
  register(raw: string): void {
    for (const part of [raw, raw.trim(), ...raw.split(/\r?\n|\r/).map((line) => line.trim())]) {
      if (part.length >= MIN_REGISTERED_LENGTH) this.#secrets.add(part);
    }
  }

  /** `text` with every registered secret and every secret-looking pattern replaced by `[redacted]`. */
  redact(text: string): string {
    let result = text;
    // Longest first, so a line of a registered value does not leave the rest of a longer one behind.
    for (const secret of [...this.#secrets].sort((a, b) => b.length - a.length)) result = result.split(secret).join('[redacted]');
    return redactSecrets(result);
  }
}

/** The message of `err` for a user: the error's own message (or its text), filtered by `redactor`. */
export function safeMessage(err: unknown, redactor?: SecretRedactor): string {
  const message = err instanceof Error ? err.message : String(err);
  return redactor === undefined ? redactSecrets(message) : redactor.redact(message);
}
