/**
 * The commands in the README's and docs/operations.md's ```sh blocks, run as
 * written against real processes: each line either runs here (and must exit
 * 0) or is listed in SKIPPED with the reason, so a new command in a block is
 * run or consciously skipped, and a skip whose command left the docs fails.
 *
 * Each block runs in a scratch project directory that looks like a clean
 * clone after `npm ci` (`bin/`, `dist/`, `node_modules/` and `package.json`
 * linked from this checkout), with `control-plane` and `agent-host` on the
 * PATH as an installed package puts them. What the test changes, and only
 * that: the fixed ports. A line naming `127.0.0.1:7443` gets the port the
 * control plane really bound (127.0.0.1:0, so parallel tests never collide),
 * and `TETHER_LISTEN`/`TETHER_HTTP_LISTEN`/`TETHER_SERVER` say the same to the
 * lines that name no address (flags take those variables: see
 * docs/operations.md). A line ending in `&` is started in the background and
 * waited for (its "serving"/"connected" log line); everything it started is
 * stopped at the end.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HANG_BOUND_MS } from '../support/wait.js';

const ROOT = join(import.meta.dirname, '..', '..');

/** One command line of a ```sh block, with where it is. */
interface DocCommand {
  file: string;
  heading: string;
  line: string;
}

/** The ```sh blocks' command lines of `file`, each with the heading it is under. */
function shCommands(file: string): DocCommand[] {
  const commands: DocCommand[] = [];
  let heading = '';
  let isInBlock = false;
  for (const line of readFileSync(join(ROOT, file), 'utf8').split('\n')) {
    if (!isInBlock && /^#{1,6} /.test(line)) heading = line;
    else if (line.startsWith('```')) isInBlock = !isInBlock && line === '```sh';
    else if (isInBlock && line.trim() !== '') commands.push({ file, heading, line: line.trim() });
  }
  return commands;
}

const DOCS = ['README.md', 'docs/operations.md'];

/** Blocks skipped whole: `file` + heading → why. */
const SKIPPED_BLOCKS: Record<string, string> = {
  'README.md ### `control-plane` admin commands': 'a synopsis: placeholders in capitals and [options], not commands (each subcommand runs in test/control-plane/cli/)',
};

/** Single lines skipped: the line as written → why. */
const SKIPPED: Record<string, string> = {
  'npm ci && npm start      # a control plane + one agent host + a demo agent, on embedded SQLite in .tether/':
    'npm ci reinstalls node_modules (minutes, the network); npm start runs until Ctrl-C: test/scripts/quick-start.test.ts runs it and its printed commands, and the block below runs against it',
  'npm ci && npm test       # the test suite (real servers on 127.0.0.1, real gRPC)': 'the whole suite, from inside the suite',
  'npm run soak -- --minutes 30            # --seed S replays a run; --storm-hosts 1000 adds a reconnect storm': 'thirty minutes; the soak has its own tests in test/scripts/soak/',
  'npm run bench                       # all six, one process each, then a summary table and one JSON line (< 10 min on 2 cores)': 'minutes of benchmarks; test/scripts/bench/ runs them small',
  'npm run bench -- --quick            # all six at their quick sizes': 'minutes of benchmarks; test/scripts/bench/ runs them small',
  'npm run bench -- --quick tool-calls memory   # some of them': 'minutes of benchmarks; test/scripts/bench/ runs them small',
};

/** Lines that need a program the project does not install: run when it is on the PATH. */
const NEEDS_PROGRAM: [fragment: string, program: string][] = [['grpcurl ', 'grpcurl']];

function isOnPath(program: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${program}`]).status === 0;
}

/** A scratch directory that looks like a clean clone after `npm ci`, with the binaries on the PATH. */
function scratchProject(): { dir: string; path: string } {
  const dir = mkdtempSync(join(tmpdir(), 'tether-readme-'));
  for (const name of ['bin', 'dist', 'node_modules', 'package.json']) symlinkSync(join(ROOT, name), join(dir, name));
  const binDir = join(dir, '.path');
  mkdirSync(binDir);
  for (const name of ['control-plane', 'agent-host']) {
    writeFileSync(join(binDir, name), `#!/bin/sh\nexec "${process.execPath}" "${join(ROOT, 'bin', `${name}.js`)}" "$@"\n`);
    chmodSync(join(binDir, name), 0o755);
  }
  return { dir, path: `${binDir}${delimiter}${process.env.PATH ?? ''}` };
}

/** The environment a line runs with: ours minus any TETHER_ a developer has set, plus `extra`. */
function environment(path: string, extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('TETHER_')) env[key] = value;
  return { ...env, PATH: path, ...extra };
}

/** Runs `line` with sh in `cwd`; fails the test unless it exits 0. Returns its stdout. */
function runLine(line: string, cwd: string, env: NodeJS.ProcessEnv): string {
  const result = spawnSync('sh', ['-c', line], { cwd, env, encoding: 'utf8', timeout: HANG_BOUND_MS * 2 });
  expect(result.status, `${line}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`).toBe(0);
  return result.stdout;
}

/** Starts `line` (without its `&`) in its own process group and waits for a JSON log line with `msg`; resolves with that line. */
function startInBackground(line: string, cwd: string, env: NodeJS.ProcessEnv, msg: string, started: ChildProcess[]): Promise<Record<string, unknown>> {
  const child = spawn('sh', ['-c', line.replace(/&$/, '').trim()], { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`no "${msg}" from ${line} within the hang bound:\n${out}\n${err}`)), HANG_BOUND_MS * 2);
    child.stderr?.on('data', (chunk: Buffer) => (err += chunk.toString('utf8')));
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      for (const text of out.split('\n')) {
        if (!text.startsWith('{')) continue;
        const record = JSON.parse(text) as Record<string, unknown>;
        if (record.msg === msg) {
          clearTimeout(timer);
          resolve(record);
          return;
        }
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${line} exited with ${code} before "${msg}":\n${out}\n${err}`));
    });
  });
}

/** SIGTERM to each started process group, then waits (bounded) for each to exit. */
async function stopAll(started: ChildProcess[]): Promise<void> {
  await Promise.all(
    started.splice(0).map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      process.kill(-child.pid, 'SIGTERM');
      const timer = setTimeout(() => child.pid !== undefined && process.kill(-child.pid, 'SIGKILL'), HANG_BOUND_MS);
      await exited;
      clearTimeout(timer);
    }),
  );
}

const ALL = DOCS.flatMap(shCommands);
const isSkipped = (command: DocCommand): boolean => SKIPPED[command.line] !== undefined || SKIPPED_BLOCKS[`${command.file} ${command.heading}`] !== undefined;
/** Lines that are run, by the heading whose scenario runs them. */
const runBy = (file: string, heading: string): DocCommand[] => ALL.filter((c) => c.file === file && c.heading === heading && !isSkipped(c));

/** The scenarios below, by the block they run: every line not skipped must be in one. */
const SCENARIO_BLOCKS = [
  ['README.md', '## Quick start'],
  ['README.md', '## Binaries'],
  ['docs/operations.md', '## Backup and restore'],
  ['docs/operations.md', '## TLS'],
] as const;

describe('the commands in the docs', () => {
  const started: ChildProcess[] = [];
  const dirs: string[] = [];
  afterEach(async () => {
    await stopAll(started);
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('every ```sh line is run by a scenario below or skipped with a reason, and every skip is still in the docs', () => {
    const unclaimed = ALL.filter((c) => !isSkipped(c) && !SCENARIO_BLOCKS.some(([file, heading]) => c.file === file && c.heading === heading));
    expect(unclaimed.map((c) => `${c.file} (${c.heading}): ${c.line}`)).toEqual([]);
    const lines = new Set(ALL.map((c) => c.line));
    expect(Object.keys(SKIPPED).filter((line) => !lines.has(line))).toEqual([]);
    const blocks = new Set(ALL.map((c) => `${c.file} ${c.heading}`));
    expect(Object.keys(SKIPPED_BLOCKS).filter((block) => !blocks.has(block))).toEqual([]);
    for (const [file, heading] of SCENARIO_BLOCKS) expect(runBy(file, heading).length, `${file} ${heading}`).toBeGreaterThan(0);
  });

  it('the quick start block runs against npm start', async () => {
    const { dir, path } = scratchProject();
    dirs.push(dir);
    // npm start, as `npm start` runs it (scripts/start.ts), with its data in the scratch project's .tether/.
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'scripts', 'start.ts')], {
      cwd: dir,
      env: environment(path, { TETHER_DATA_DIR: join(dir, '.tether'), TETHER_LISTEN: '127.0.0.1:0', TETHER_HTTP_LISTEN: '127.0.0.1:0' }),
      detached: true,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    started.push(child);
    const printed = await new Promise<string>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`npm start not ready within the hang bound:\n${out}`)), HANG_BOUND_MS * 2);
      child.stdout?.on('data', (chunk: Buffer) => {
        out += chunk.toString('utf8');
        if (out.includes('tether: ready\n')) {
          clearTimeout(timer);
          resolve(out);
        }
      });
      child.once('exit', (code) => reject(new Error(`npm start exited with ${code}:\n${out}`)));
    });
    const address = /control plane on (127\.0\.0\.1:\d+)/.exec(printed)?.[1];
    expect(address).toBeDefined();
    const env = environment(path, { TETHER_SERVER: address ?? '' });
    let ran = 0;
    for (const { line } of runBy('README.md', '## Quick start')) {
      const missing = NEEDS_PROGRAM.find(([fragment, program]) => line.includes(fragment) && !isOnPath(program));
      if (missing !== undefined) {
        console.log(`readme-commands: not run (${missing[1]} is not installed): ${line}`);
        continue;
      }
      const stdout = runLine(line.replaceAll('127.0.0.1:7443', address ?? ''), dir, env);
      if (line.endsWith('tether.v1.AdminService/ListAgents')) expect(stdout).toContain('demo-agent');
      if (line.endsWith('agents ls')) expect(stdout).toContain('demo-agent');
      ran += 1;
    }
    expect(ran).toBeGreaterThanOrEqual(5);
  });

  it('running the binaries apart, then backup and restore, work as written', async () => {
    const { dir, path } = scratchProject();
    dirs.push(dir);
    const env: Record<string, string> = { TETHER_LISTEN: '127.0.0.1:0', TETHER_HTTP_LISTEN: '127.0.0.1:0' };
    let hostId = '';
    for (const { line } of runBy('README.md', '## Binaries')) {
      if (line.endsWith('&') && line.includes(' serve ')) {
        const serving = await startInBackground(line, dir, environment(path, env), 'control plane serving', started);
        env.TETHER_SERVER = `127.0.0.1:${String(serving.port)}`;
      } else if (line.endsWith('&') && line.includes('agent-host')) {
        await startInBackground(line, dir, environment(path, env), 'connected to control plane', started);
      } else {
        expect(line.endsWith('&'), `a background line this test does not know how to wait for: ${line}`).toBe(false);
        const stdout = runLine(line, dir, environment(path, env));
        if (line.includes('hosts enroll')) hostId = stdout.trim();
      }
    }
    // The agent it dispatched is on the host it enrolled (whose id `hosts enroll` printed).
    expect(hostId).not.toBe('');
    expect(runLine('TETHER_ADMIN_TOKEN_FILE=admin-token control-plane agents ls', dir, environment(path, env))).toContain(hostId);

    // docs/operations.md, Backup and restore: on the store the serve line above uses (TETHER_DATA_DIR: the flag's variable).
    env.TETHER_DATA_DIR = 'tether-data';
    for (const { line } of runBy('docs/operations.md', '## Backup and restore')) {
      // The docs say restore runs with the control plane stopped (it refuses otherwise): so it is.
      if (line.startsWith('control-plane restore')) await stopAll(started);
      runLine(line, dir, environment(path, env));
    }
  });

  it('the TLS block works as written: a control plane on TLS, an admin command verifying it', async () => {
    const { dir, path } = scratchProject();
    dirs.push(dir);
    const env: Record<string, string> = { TETHER_LISTEN: '127.0.0.1:0', TETHER_HTTP_LISTEN: '127.0.0.1:0' };
    let ranAdmin = false;
    for (const { line } of runBy('docs/operations.md', '## TLS')) {
      if (line.endsWith('&')) {
        const serving = await startInBackground(line, dir, environment(path, env), 'control plane serving', started);
        expect(serving.tls).toBe(true);
        env.TETHER_SERVER = `127.0.0.1:${String(serving.port)}`;
      } else {
        runLine(line, dir, environment(path, env));
        ranAdmin ||= line.includes('--ca-file');
      }
    }
    expect(ranAdmin).toBe(true);
    // What the comment says: the same command without --ca-file does not get through.
    const plaintext = spawnSync('sh', ['-c', 'control-plane --data-dir tls-data hosts ls'], { cwd: dir, env: environment(path, env), encoding: 'utf8', timeout: HANG_BOUND_MS * 2 });
    expect(plaintext.status).not.toBe(0);
  });
});
