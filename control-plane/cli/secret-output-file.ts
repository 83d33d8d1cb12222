import { closeSync, fsyncSync, lstatSync, openSync, rmSync, writeSync } from 'node:fs';

/**
 * The file a command writes a secret to (`--token-file`), in place of printing
 * it: created by `open`, mode 0600 from the start (never written wider and
 * narrowed later), and never an existing path. `O_CREAT | O_EXCL` also refuses
 * a symbolic link, even a dangling one, so the secret cannot be steered into a
 * file someone else chose. Open it before asking for the secret, so a bad path
 * costs nothing (no host enrolled whose join token is lost); then `write` once,
 * or `discard` if there is nothing to write.
 */
export class SecretOutputFile {
  readonly path: string;
  #fd: number | undefined;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.#fd = fd;
  }

  /** Creates `path` empty, 0600; refuses an existing path or a symbolic link with an error that says which. */
  static open(path: string): SecretOutputFile {
    try {
      return new SecretOutputFile(path, openSync(path, 'wx', 0o600));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let isLink = false;
      try {
        isLink = lstatSync(path).isSymbolicLink();
      } catch {
        // Gone again: refused as existing all the same.
      }
      throw new Error(
        isLink
          ? `${path} is a symbolic link: --token-file writes only a new file, never through a link`
          : `${path} already exists: --token-file writes only a new file (remove it first, or choose another path)`,
        { cause: err },
      );
    }
  }

  /** Writes `secret` and a newline, syncs and closes the file. */
  write(secret: string): void {
    const fd = this.#take();
    try {
      const bytes = Buffer.from(`${secret}\n`, 'utf8');
      for (let written = 0; written < bytes.length; ) {
        const count = writeSync(fd, bytes, written, bytes.length - written);
        if (count === 0) throw new Error(`nothing could be written to ${this.path}`);
        written += count;
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  /** Closes and removes the file (still empty). Idempotent, and a no-op after `write`. */
  discard(): void {
    if (this.#fd === undefined) return;
    closeSync(this.#take());
    rmSync(this.path, { force: true });
  }

  #take(): number {
    const fd = this.#fd;
    if (fd === undefined) throw new Error(`${this.path} was already written or discarded`);
    this.#fd = undefined;
    return fd;
  }
}
