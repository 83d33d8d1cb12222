import { constants, readFileSync } from 'node:fs';
import { open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as nextPoll } from 'node:timers/promises';
import { FailedPreconditionError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';

/**
 * The file in a process agent's directory naming its process (the leader of its
 * process group) while this host runs it; removed once the process has exited.
 * Left behind only when the host died first.
 */
export const AGENT_PID_FILE = 'agent.pid';

/** How long a stale copy killed with SIGKILL may take to be gone (real time: the kernel's work, not the host's schedule). */
const STALE_EXIT_BOUND_MS = 5_000;
const STALE_EXIT_POLL_MS = 10;

/**
 * Records `pid` as the process of the agent in `agentDir` (0600, created
 * afresh: never written through whatever the agent may have put there).
 */
export async function recordAgentProcess(agentDir: string, pid: number): Promise<void> {
  const path = join(agentDir, AGENT_PID_FILE);
  await rm(path, { force: true });
  await writeFile(path, `${pid}\n`, { mode: 0o600, flag: 'wx' });
}

/** The pid recorded in `agentDir`, if any: read without following a link, and at most a few bytes of it. */
async function recordedPid(agentDir: string): Promise<number | undefined> {
  let file;
  try {
    file = await open(join(agentDir, AGENT_PID_FILE), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    // A link, or anything else in its place: not ours to follow.
    if (code === 'ELOOP' || code === 'EMLINK') return Number.NaN;
    throw err;
  }
  try {
    if (!(await file.stat()).isFile()) return Number.NaN;
    const buffer = Buffer.alloc(24);
    const { bytesRead } = await file.read(buffer, 0, buffer.length, 0);
    return Number(buffer.subarray(0, bytesRead).toString('utf8').trim());
  } finally {
    await file.close();
  }
}

/** Forgets the process of the agent in `agentDir` (it has exited). */
export async function forgetAgentProcess(agentDir: string): Promise<void> {
  await rm(join(agentDir, AGENT_PID_FILE), { force: true });
}

/** Whether `pid` is running ('alive'), exited but not reaped ('zombie'), or gone. */
function processState(pid: number): 'alive' | 'zombie' | 'gone' {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? 'alive' : 'gone';
  }
  try {
    // The state field follows the name, which may itself hold spaces and parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z') ? 'zombie' : 'alive';
  } catch {
    return 'alive';
  }
}

/** Whether a process group `pgid` of this user still has a member. */
function groupExists(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether the running process `pid` is a process agent of `agentDir` (its
 * environment names that directory, as the host set it): a pid reused by
 * anything else is never touched. False where that cannot be read (no /proc).
 */
async function runsIn(pid: number, agentDir: string): Promise<boolean> {
  try {
    const environ = await readFile(`/proc/${pid}/environ`, 'utf8');
    return environ.split('\0').includes(`TETHER_AGENT_DIR=${agentDir}`);
  } catch {
    return false;
  }
}

/**
 * Stops a copy of the agent that an earlier run of this host left running in
 * `agentDir` (the host was killed; the agent did not exit when its stdin
 * closed): SIGKILL to its whole process group, then waits (bounded) for it to
 * be gone. Such a copy reads the token file at each call, so it must be gone
 * before a new token is written there, or it would act with the new
 * incarnation's identity beside the new copy. The process is known by
 * {@link AGENT_PID_FILE}; a live leader is stopped only if its environment
 * names this directory, and a group whose leader has exited (its id cannot be
 * reused while the group lives) is stopped as it is. Resolves with the pid
 * stopped, if any; FailedPreconditionError if it does not go.
 */
export async function stopStaleAgentProcess(agentDir: string, logger: Logger): Promise<number | undefined> {
  if (process.platform === 'win32') return undefined;
  const pid = await recordedPid(agentDir);
  if (pid === undefined) return undefined;
  if (!Number.isSafeInteger(pid) || pid <= 1) {
    await forgetAgentProcess(agentDir);
    return undefined;
  }
  const leader = processState(pid);
  const isOurs = leader === 'alive' ? await runsIn(pid, agentDir) : groupExists(pid);
  if (!isOurs) {
    await forgetAgentProcess(agentDir);
    return undefined;
  }
  try {
    process.kill(-pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
  for (let waitedMs = 0; processState(pid) === 'alive'; waitedMs += STALE_EXIT_POLL_MS) {
    if (waitedMs >= STALE_EXIT_BOUND_MS) throw new FailedPreconditionError(`a stale copy of the agent in ${agentDir} (pid ${pid}) did not exit when killed`);
    await nextPoll(STALE_EXIT_POLL_MS);
  }
  await forgetAgentProcess(agentDir);
  logger.warn({ pid, agentDir }, 'stopped a stale copy of the agent, left running by an earlier run of this host');
  return pid;
}

/**
 * At the start of a host, which runs no agent yet: stops every process agent
 * an earlier run left running in `agentsDir` (see {@link stopStaleAgentProcess})
 * and deletes the token files it left, so nothing there can act for an agent
 * that may now live elsewhere. Returns how many stale processes it stopped.
 */
export async function stopStaleAgents(agentsDir: string, logger: Logger): Promise<number> {
  let stopped = 0;
  for (const entry of await readdir(agentsDir, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    const agentDir = join(agentsDir, entry.name);
    try {
      if ((await stopStaleAgentProcess(agentDir, logger)) !== undefined) stopped++;
      await rm(join(agentDir, 'token'), { force: true });
    } catch (err) {
      // Not a reason to stay down: starting that agent here again checks its directory once more, and fails if this persists.
      logger.error({ err, agentDir }, 'could not clear what an earlier run of this host left in an agent directory');
    }
  }
  return stopped;
}
