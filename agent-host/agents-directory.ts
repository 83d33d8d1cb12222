import { chmod, lstat, mkdir } from 'node:fs/promises';
import { FailedPreconditionError } from '../common/errors.js';

/** The user this process runs as, where the platform has one. */
function ownUid(): number | undefined {
  return typeof process.getuid === 'function' ? process.getuid() : undefined;
}

/**
 * Makes `dir` ready to hold the process agents' own directories. Missing, it is
 * created 0700 (with any missing parents). Existing, it is the operator's and
 * its mode is left alone (a host once forced `--agents-dir /tmp` to 0700,
 * dropping its sticky bit); it is refused, with an error that says why, if it
 * is not a real directory, belongs to another user, or is writable by group or
 * others: in a shared directory anyone could plant or swap an agent's
 * directory before the host creates it.
 */
export async function prepareAgentsDirectory(dir: string): Promise<void> {
  let created: string | undefined;
  try {
    created = await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    // Something not a directory is in the way: said clearly below.
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const info = await lstat(dir);
  if (info.isSymbolicLink()) throw new FailedPreconditionError(`the agents directory ${dir} is a symbolic link: give its real path`);
  if (!info.isDirectory()) throw new FailedPreconditionError(`the agents directory ${dir} is not a directory`);
  const uid = ownUid();
  if (uid !== undefined && info.uid !== uid) {
    throw new FailedPreconditionError(`the agents directory ${dir} belongs to user ${info.uid}, not to this host's user ${uid}: give a directory of its own`);
  }
  if ((info.mode & 0o022) !== 0) {
    throw new FailedPreconditionError(
      `the agents directory ${dir} is writable by ${(info.mode & 0o002) !== 0 ? 'others' : 'its group'} (mode ${(info.mode & 0o7777).toString(8)}): give a directory of the host's own, or a path that does not exist yet`,
    );
  }
  // Only what this call created is narrowed (a umask can leave it wider or narrower than asked).
  if (created !== undefined && (info.mode & 0o777) !== 0o700) await chmod(dir, 0o700);
}

/**
 * `dir`, one agent's own directory inside a checked agents directory, exists,
 * is a real directory of this user and is 0700: created so when missing. The
 * host made it (now or in an earlier run), so narrowing it is the host's call.
 */
export async function ensureAgentDirectory(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const info = await lstat(dir);
  if (!info.isDirectory()) throw new FailedPreconditionError(`${dir} is not a directory`);
  const uid = ownUid();
  if (uid !== undefined && info.uid !== uid) throw new FailedPreconditionError(`${dir} belongs to another user`);
  // Narrowing a directory that holds no secret yet (the token file is written after this).
  if ((info.mode & 0o777) !== 0o700) await chmod(dir, 0o700);
}
