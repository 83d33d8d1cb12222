import { InvalidArgumentError } from './errors.js';

/** One audience-token file of a process agent: `<agent dir>/tokens/<name>`, holding a token for `audience`. */
export interface AudienceFileSpec {
  name: string;
  audience: string;
}

/** The most audience-token files one agent may ask for. */
export const MAX_AUDIENCE_FILES = 16;

/** A file name: letters, digits, `_` and `-`, starting with a letter or digit (never `/`, `.` or `..`). */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** Names the host keeps for itself (the agent's own token file is `token`). */
const RESERVED_NAMES: ReadonlySet<string> = new Set(['token']);

/** An audience: 1 to 256 printable ASCII characters, no spaces (as MintToken takes). */
const AUDIENCE_PATTERN = /^[\x21-\x7e]{1,256}$/;

/** The environment variable holding the path of audience file `name`: `TETHER_AUDIENCE_FILE_<NAME>` (upper case, `-` as `_`). */
export function audienceFileVariable(name: string): string {
  return `TETHER_AUDIENCE_FILE_${name.toUpperCase().replace(/-/g, '_')}`;
}

/**
 * Throws InvalidArgumentError unless `files` can be kept: at most
 * {@link MAX_AUDIENCE_FILES}, each name a plain file name the host does not
 * use itself, no two names with the same variable, each audience plain.
 */
export function validateAudienceFiles(files: readonly AudienceFileSpec[]): void {
  if (files.length > MAX_AUDIENCE_FILES) throw new InvalidArgumentError(`at most ${MAX_AUDIENCE_FILES} audience files, got ${files.length}`);
  const variables = new Set<string>();
  for (const { name, audience } of files) {
    if (!NAME_PATTERN.test(name) || RESERVED_NAMES.has(name)) {
      throw new InvalidArgumentError(
        `audience file name ${JSON.stringify(name.slice(0, 80))} must be 1 to 64 of letters, digits, _ and -, starting with a letter or digit, and not ${[...RESERVED_NAMES].join(', ')}`,
      );
    }
    const variable = audienceFileVariable(name);
    if (variables.has(variable)) throw new InvalidArgumentError(`audience file ${name} has the same variable (${variable}) as another`);
    variables.add(variable);
    if (!AUDIENCE_PATTERN.test(audience)) throw new InvalidArgumentError(`the audience of file ${name} must be 1 to 256 printable ASCII characters without spaces`);
  }
}

/** Parses the CLI's `NAME=AUDIENCE` (the audience may itself hold `=`). */
export function parseAudienceFile(value: string): AudienceFileSpec {
  const eq = value.indexOf('=');
  if (eq <= 0 || eq === value.length - 1) throw new InvalidArgumentError(`an audience file is NAME=AUDIENCE, got ${JSON.stringify(value.slice(0, 80))}`);
  const file = { name: value.slice(0, eq), audience: value.slice(eq + 1) };
  validateAudienceFiles([file]);
  return file;
}
