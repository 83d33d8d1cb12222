import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
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

/** Keeps the credential in `host-credential.json` (0600) in the host's data directory. */
export class FileHostCredentialStore implements HostCredentialStore {
  readonly #path: string;
  readonly #directory: string;

  constructor(directory: string) {
    this.#directory = directory;
    this.#path = join(directory, 'host-credential.json');
  }

  /** The file's path. */
  get path(): string {
    return this.#path;
  }

  async load(): Promise<Credential | undefined> {
    try {
      return JSON.parse(await readFile(this.#path, 'utf8')) as Credential;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async save(credential: Credential): Promise<void> {
    await mkdir(this.#directory, { recursive: true, mode: 0o700 });
    await writeFileAtomic0600(this.#path, JSON.stringify(credential));
  }
}
