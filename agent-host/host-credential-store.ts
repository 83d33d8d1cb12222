import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidSecretError } from '../common/errors.js';
import { tokenProblem, type SecretRedactor } from '../common/secrets.js';
import type { Credential } from '../gen/tether/v1/common.js';

/** Where a host keeps its own credential between runs. */
export interface HostCredentialStore {
  load(): Promise<Credential | undefined>;
  save(credential: Credential): Promise<void>;
}

/** Keeps the credential in memory only (tests; a host that re-joins every run). */
export class MemoryHostCredentialStore implements HostCredentialStore {
  #credential: Credential | undefined;

  load(): Promise<Credential | undefined> {
    return Promise.resolve(this.#credential);
  }

  save(credential: Credential): Promise<void> {
    this.#credential = credential;
    return Promise.resolve();
  }
}

/**
 * Writes `content` to `path` atomically with mode 0600: a new file beside it,
 * created exclusively with that mode (never chmod after writing), then renamed over.
 */
export async function writeFileAtomic0600(path: string, content: string): Promise<void> {
  const temporary = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = await open(temporary, 'wx', 0o600);
  try {
    await handle.writeFile(content, 'utf8');
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(temporary, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await rename(temporary, path);
  } catch (err) {
    await rm(temporary, { force: true });
    throw err;
  }
}

/** The numeric fields of a stored {@link Credential}: whole numbers, at least 0. */
const CREDENTIAL_NUMBERS = ['issuedAtMs', 'expiresAtMs', 'generation'] as const;

/**
 * The credential stored at `path` as parsed from `text`, checked field by field;
 * {@link InvalidSecretError} naming the file and the field otherwise, never a
 * value (a JSON parser's own message quotes its input, so it is not passed on).
 */
export function parseStoredCredential(text: string, path: string, redactor?: SecretRedactor): Credential {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new InvalidSecretError(`${path} is not valid JSON: remove it and enroll the host again`);
  }
  if (typeof value !== 'object' || value === null) throw new InvalidSecretError(`${path} does not hold a credential object`);
  const record = value as Record<string, unknown>;
  const { token } = record;
  if (typeof token !== 'string') throw new InvalidSecretError(`${path}: "token" is not a string`);
  redactor?.register(token);
  const problem = tokenProblem(token);
  if (problem !== undefined) throw new InvalidSecretError(`${path}: "token" ${problem}`);
  for (const field of CREDENTIAL_NUMBERS) {
    const number = record[field];
    if (typeof number !== 'number' || !Number.isSafeInteger(number) || number < 0) throw new InvalidSecretError(`${path}: "${field}" is not a whole number`);
  }
  for (const field of ['keyId', 'tokenId'] as const) {
    if (typeof record[field] !== 'string') throw new InvalidSecretError(`${path}: "${field}" is not a string`);
  }
  return {
    token,
    issuedAtMs: record.issuedAtMs as number,
    expiresAtMs: record.expiresAtMs as number,
    generation: record.generation as number,
    keyId: record.keyId as string,
    tokenId: record.tokenId as string,
  };
}

/**
 * Keeps the credential in `host-credential.json` (0600) in the host's data
 * directory. A file that does not hold a well-formed credential fails `load`
 * with {@link InvalidSecretError}: a lasting fault, not a hiccup to retry.
 */
export class FileHostCredentialStore implements HostCredentialStore {
  readonly #path: string;
  readonly #directory: string;
  readonly #redactor: SecretRedactor | undefined;

  /** `redactor`, when given, learns each token read, so no later message shows it. */
  constructor(directory: string, redactor?: SecretRedactor) {
    this.#directory = directory;
    this.#path = join(directory, 'host-credential.json');
    this.#redactor = redactor;
  }

  /** The file's path. */
  get path(): string {
    return this.#path;
  }

  async load(): Promise<Credential | undefined> {
    let text: string;
    try {
      text = await readFile(this.#path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return parseStoredCredential(text, this.#path, this.#redactor);
  }

  async save(credential: Credential): Promise<void> {
    await mkdir(this.#directory, { recursive: true, mode: 0o700 });
    await writeFileAtomic0600(this.#path, JSON.stringify(credential));
  }
}
