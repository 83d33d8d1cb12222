/**
 * A process agent for tests: plain Node, no Tether library, only what a
 * process agent gets (its environment, its token file, stdin and stdout).
 * Every file it writes goes into its own directory ($TETHER_AGENT_DIR).
 *
 * Flags:
 *   --read-loop       reads the token file in a tight loop, checking every read
 *                     (a complete JWT whose payload parses, mode 0600); on each
 *                     message it writes what it saw to report.json, then acks.
 *   --dump-env        writes its environment to env.json at start, and prints its
 *                     token on stdout and stderr (the host must redact both).
 *   --report-each     on each message, reads the token file once and appends the
 *                     message's payload with the token's `gen` and `jti` to
 *                     seen.json (the whole list, replaced atomically), then acks.
 *   --orphan-holds-output  starts a detached grandchild that holds its stdout and
 *                     stderr open (and sleeps) and writes its pid to `orphan`: once
 *                     this process has exited, its output still has not ended.
 *   --audience-each   on each message, reads the audience-token file named by
 *                     $TETHER_AUDIENCE_FILE_AWS once and appends the message's
 *                     payload, the file's path, mode and content to audience.json.
 *   --ignore-sigterm  survives SIGTERM and the end of stdin (writes `sigterm` when
 *                     it gets one); only SIGKILL ends it.
 *   --call-loop       calls AgentService.Heartbeat at $TETHER_SERVER over and over
 *                     (one call at a time), each with the token read from the token
 *                     file at that moment, and keeps `calls-<pid>.json` up to date:
 *                     how many were accepted and refused, the incarnations (`inc`
 *                     claim) of the tokens accepted, and the last outcome. A copy
 *                     that should not act shows here whether it still could (two
 *                     copies in one directory each have their own file).
 * Always: writes `ready` once set up; acks each message; answers each
 * liveness probe `{"ping":N}` with `{"pong":N}`; a payload "exit N" is acked
 * and then the process exits with status N.
 */
import { spawn } from 'node:child_process';
import { setTimeout } from 'node:timers';
import { closeSync, fstatSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const flags = new Set(process.argv.slice(2));
const audienceEach = [];
const dir = process.env.TETHER_AGENT_DIR ?? '.';
const tokenFile = process.env.TETHER_TOKEN_FILE ?? '';

/** Writes a file atomically (so the test never reads half of it). */
function publish(name, content) {
  const temporary = join(dir, `.${name}.tmp`);
  writeFileSync(temporary, content, { mode: 0o600 });
  renameSync(temporary, join(dir, name));
}

const seen = { reads: 0, bad: 0, problems: [], generations: new Set(), inodes: new Set(), maxGeneration: 0 };

/** One read of the token file, checked. */
function readOnce() {
  seen.reads++;
  let problem;
  try {
    const fd = openSync(tokenFile, 'r');
    try {
      const info = fstatSync(fd);
      const content = readFileSync(fd, 'utf8');
      seen.inodes.add(info.ino);
      const parts = content.split('.');
      if ((info.mode & 0o777) !== 0o600) problem = `mode ${(info.mode & 0o777).toString(8)}`;
      else if (parts.length !== 3 || parts.some((part) => part === '')) problem = `${parts.length} parts`;
      else {
        const payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
        if (typeof payload.gen !== 'number') problem = 'no gen';
        else {
          seen.generations.add(payload.gen);
          seen.maxGeneration = Math.max(seen.maxGeneration, payload.gen);
        }
      }
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    problem = err.code ?? err.message;
  }
  if (problem !== undefined) {
    seen.bad++;
    if (seen.problems.length < 10) seen.problems.push(problem);
  }
}

/** Reads in bursts, yielding between them so stdin is still served. */
function readLoop() {
  for (let i = 0; i < 200; i++) readOnce();
  setImmediate(readLoop);
}

function report() {
  readOnce();
  publish(
    'report.json',
    JSON.stringify({
      reads: seen.reads,
      bad: seen.bad,
      problems: seen.problems,
      generations: seen.generations.size,
      inodes: seen.inodes.size,
      maxGeneration: seen.maxGeneration,
    }),
  );
}

const seenEach = [];

/** What the token file holds at this moment: its `gen` and `jti` (or the error reading it). */
function tokenNow() {
  try {
    const parts = readFileSync(tokenFile, 'utf8').split('.');
    const payload = JSON.parse(Buffer.from(parts[1] ?? '', 'base64url').toString('utf8'));
    return { gen: payload.gen, jti: payload.jti };
  } catch (err) {
    return { error: err.code ?? err.message };
  }
}

function onLine(line) {
  if (line.trim() === '') return;
  const message = JSON.parse(line);
  if (typeof message.ping === 'number') {
    process.stdout.write(`${JSON.stringify({ pong: message.ping })}\n`);
    return;
  }
  const text = Buffer.from(message.payload, 'base64').toString('utf8');
  if (flags.has('--read-loop')) report();
  if (flags.has('--report-each')) {
    seenEach.push({ seq: message.seq, text, ...tokenNow() });
    publish('seen.json', JSON.stringify(seenEach));
  }
  if (flags.has('--audience-each')) {
    const path = process.env.TETHER_AUDIENCE_FILE_AWS ?? '';
    const fd = openSync(path, 'r');
    try {
      audienceEach.push({ text, path, mode: fstatSync(fd).mode & 0o777, token: readFileSync(fd, 'utf8') });
    } finally {
      closeSync(fd);
    }
    publish('audience.json', JSON.stringify(audienceEach));
  }
  process.stdout.write(`${JSON.stringify({ ack: message.seq })}\n`);
  const exit = /^exit (\d+)$/.exec(text);
  if (exit !== null) process.exit(Number(exit[1]));
}

process.stdout.on('error', () => process.exit(1));
if (flags.has('--dump-env')) {
  publish('env.json', JSON.stringify(process.env));
  const token = readFileSync(tokenFile, 'utf8');
  console.log(`my token is ${token}`);
  console.error(`my token is ${token}`);
}
if (flags.has('--ignore-sigterm')) {
  process.on('SIGTERM', () => publish('sigterm', String(process.pid)));
  // Keeps the process alive once stdin has ended.
  setInterval(() => undefined, 1 << 30);
}
/** HeartbeatRequest { agent_id = 1 }, encoded by hand (this script uses no generated code). */
function heartbeatRequest(agentId) {
  const id = Buffer.from(agentId, 'utf8');
  return Buffer.concat([Buffer.from([0x0a, id.length]), id]);
}

/** Calls Heartbeat in a loop with the token in the file at each call; counts the outcomes in calls.json. */
async function startCallLoop() {
  const grpc = await import('@grpc/grpc-js');
  const agentId = process.env.TETHER_AGENT_ID ?? '';
  const client = new grpc.Client(process.env.TETHER_SERVER ?? '', grpc.credentials.createInsecure());
  const calls = { ok: 0, refused: 0, acceptedIncarnations: [], last: '' };
  const once = () => {
    let token = '';
    try {
      token = readFileSync(tokenFile, 'utf8').trim();
    } catch (err) {
      token = '';
      calls.last = `token file: ${err.code ?? err.message}`;
    }
    let incarnation;
    try {
      incarnation = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')).inc;
    } catch {
      incarnation = undefined;
    }
    const metadata = new grpc.Metadata();
    if (token !== '') metadata.set('authorization', `Bearer ${token}`);
    client.makeUnaryRequest(
      '/tether.v1.AgentService/Heartbeat',
      (request) => request,
      (response) => response,
      heartbeatRequest(agentId),
      metadata,
      { deadline: Date.now() + 5_000 },
      (err) => {
        if (err === null) {
          calls.ok++;
          calls.last = 'ok';
          if (!calls.acceptedIncarnations.includes(incarnation)) calls.acceptedIncarnations.push(incarnation);
        } else {
          calls.refused++;
          calls.last = `code ${err.code}`;
        }
        publish(`calls-${process.pid}.json`, JSON.stringify(calls));
        setTimeout(once, 10);
      },
    );
  };
  once();
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', onLine);
lines.on('close', () => {
  if (!flags.has('--ignore-sigterm')) process.exit(0);
});
if (flags.has('--read-loop')) readLoop();
if (flags.has('--call-loop')) await startCallLoop();
if (flags.has('--orphan-holds-output')) {
  const orphan = spawn(process.execPath, ['-e', 'setInterval(() => undefined, 1 << 30)'], { stdio: ['ignore', 'inherit', 'inherit'], detached: true });
  orphan.unref();
  publish('orphan', String(orphan.pid));
}
publish('ready', String(process.pid));
