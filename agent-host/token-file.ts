import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ClosedError } from '../common/errors.js';

/**
 * Replaces `path` with `content` atomically, mode 0600 from the first byte: a
 * new file beside it, opened exclusively (`wx`, so never an existing file or a
 * planted symlink) with that mode, written, flushed, then renamed over `path`.
 * Never chmod after writing: a file created wider and narrowed later is
 * readable in between. A reader sees the old file or the new one, never part
 * of either; each replacement is a new inode. The temporary is removed on failure.
 */
export async function replaceFile0600(path: string, content: string): Promise<void> {
  const temporary = join(dirname(path), `.${basename(path)}.${randomBytes(8).toString('hex')}.tmp`);
  const handle = await open(temporary, 'wx', 0o600);
  try {
    try {
      await handle.writeFile(content, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temporary, path);
  } catch (err) {
    await rm(temporary, { force: true });
    throw err;
  }
}

/**
 * A process agent's token file: the agent's current token and nothing else
 * (no newline), replaced atomically at each rotation so tools in any language
 * can read it at the moment of a call. Writes are serialised; after `close()`
 * the file is gone and nothing writes it again.
 */
export class TokenFile {
  /** The file's path (what the agent gets as `TETHER_TOKEN_FILE`). */
  readonly path: string;
  #chain: Promise<void> = Promise.resolve();
  #isClosed = false;

  constructor(path: string) {
    this.path = path;
  }

  /** Replaces the file's content with `token`; ClosedError after `close()`. */
  write(token: string): Promise<void> {
    const next = this.#chain.then(async () => {
      if (this.#isClosed) throw new ClosedError('token file');
      await replaceFile0600(this.path, token);
    });
    this.#chain = next.catch(() => undefined);
    return next;
  }

  /** Waits for any write in progress, then removes the file for good. Idempotent. */
  close(): Promise<void> {
    const next = this.#chain.then(async () => {
      this.#isClosed = true;
      await rm(this.path, { force: true });
    });
    this.#chain = next.catch(() => undefined);
    return next;
  }
}
