/**
 * Tether as a package (issue 18, Show 1): `npm pack` of this repository,
 * installed with `npm install` into an empty directory, used only from there,
 * with plain Node (no TypeScript loader is installed):
 * - the tarball holds the compiled code, its declarations (internals
 *   stripped) and the descriptor set reflection reads, and no sources or tests;
 * - both installed binaries answer `--help`; a real `control-plane serve` and
 *   `agent-host` pair runs from there (loopback, port 0), the host enrolled
 *   with the installed CLI;
 * - a plain `.mjs` process agent in that directory imports `tether/tools` and
 *   calls `AgentClient.whoAmI` with its real agent token (the token file the
 *   host keeps for it).
 *
 * Installing is `npm install --prefer-offline` from the local npm cache (the
 * registry only for metadata the cache lacks). better-sqlite3's native addon
 * is the one thing npm would otherwise fetch from GitHub or compile (minutes):
 * the test hands its install script (prebuild-install) a local prebuild made of
 * this checkout's own compiled addon, for the same Node ABI and platform. If
 * npm resolves another better-sqlite3 version than this checkout's, there is
 * no matching prebuild and it compiles: slow, still correct.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HANG_BOUND_MS, waitUntil } from '../support/wait.js';

const ROOT = join(import.meta.dirname, '..', '..');
/** Bounds only catching a hang: `npm install` may have to compile better-sqlite3 (see above). */
const INSTALL_BOUND_MS = 300_000;
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `command args` in `cwd` until it exits; rejects after `boundMs` (killing it). */
function run(command: string, args: readonly string[], options: { cwd: string; env?: NodeJS.ProcessEnv; boundMs?: number }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const boundMs = options.boundMs ?? HANG_BOUND_MS;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')} did not finish within ${boundMs} ms:\n${stdout}\n${stderr}`));
    }, boundMs);
    child.once('error', reject);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** A long-running child (an installed binary), its output kept; `stop()` ends it (bounded). */
class Running {
  readonly output = { stdout: '', stderr: '' };
  readonly #child;
  readonly #exited: Promise<number | null>;
  #hasExited = false;

  constructor(command: string, args: readonly string[], cwd: string, env: NodeJS.ProcessEnv) {
    this.#child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child.stdout.setEncoding('utf8').on('data', (chunk: string) => (this.output.stdout += chunk));
    this.#child.stderr.setEncoding('utf8').on('data', (chunk: string) => (this.output.stderr += chunk));
    this.#exited = new Promise((resolve) =>
      this.#child.once('close', (code) => {
        this.#hasExited = true;
        resolve(code);
      }),
    );
  }

  /** The first JSON log line whose `msg` is `msg`, once it is there; fails if the process exits first. */
  async logged(msg: string): Promise<Record<string, unknown>> {
    let found: Record<string, unknown> | undefined;
    await waitUntil(() => {
      // Complete lines only: the last piece may be half a line.
      for (const line of this.output.stdout.split('\n').slice(0, -1)) {
        if (!line.startsWith('{')) continue;
        const record = JSON.parse(line) as Record<string, unknown>;
        if (record.msg === msg) {
          found = record;
          return true;
        }
      }
      if (this.#hasExited) throw new Error(`it exited before logging "${msg}":\n${this.output.stdout}\n${this.output.stderr}`);
      return false;
    }, `"${msg}"`);
    return found as Record<string, unknown>;
  }

  async stop(): Promise<number | null> {
    if (!this.#hasExited) this.#child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        this.#child.kill('SIGKILL');
        reject(new Error('it did not exit on SIGTERM'));
      }, HANG_BOUND_MS);
    });
    try {
      return await Promise.race([this.#exited, bound]);
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The process agent: plain Node, importing the installed package's tool library by its name. */
const WHOAMI_AGENT = `
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const out = join(process.env.TETHER_AGENT_DIR, 'whoami.json');
const report = (result) => (writeFileSync(out + '.tmp', JSON.stringify(result)), renameSync(out + '.tmp', out));
createInterface({ input: process.stdin }).on('line', (line) => {
  const message = JSON.parse(line);
  if (message.ping !== undefined) process.stdout.write(JSON.stringify({ pong: message.ping }) + '\\n');
  else if (message.seq !== undefined) process.stdout.write(JSON.stringify({ ack: message.seq }) + '\\n');
}).on('close', () => process.exit(0));
try {
  const { AgentClient, fromFile } = await import('tether/tools');
  const client = new AgentClient({ target: process.env.TETHER_SERVER, source: fromFile(process.env.TETHER_TOKEN_FILE) });
  report({ me: await client.whoAmI() });
} catch (err) {
  report({ error: String(err) });
}
`;

/** A directory prebuild-install takes as its local prebuilds: this checkout's compiled better-sqlite3 addon, packed as its release would be. */
async function localSqlitePrebuilds(dir: string): Promise<string> {
  const require = createRequire(join(ROOT, 'package.json'));
  const packageDir = dirname(require.resolve('better-sqlite3/package.json'));
  const { version } = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8')) as { version: string };
  const staging = join(dir, 'staging');
  mkdirSync(join(staging, 'build', 'Release'), { recursive: true });
  writeFileSync(join(staging, 'build', 'Release', 'better_sqlite3.node'), readFileSync(join(packageDir, 'build', 'Release', 'better_sqlite3.node')));
  const name = `better-sqlite3-v${version}-node-v${process.versions.modules}-${process.platform}-${process.arch}.tar.gz`;
  const tar = await run('tar', ['-czf', join(dir, name), 'build'], { cwd: staging });
  expect(tar.status, tar.stderr).toBe(0);
  return dir;
}

describe('tether as an installed package', () => {
  let work: string;
  let app: string;
  let tarballFiles: string[];
  const running: Running[] = [];

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'tether-package-'));
    app = join(work, 'app');
    mkdirSync(app);
    // npm pack runs `prepare` (the build): the tarball is what a publish would ship.
    const packed = await run(NPM, ['pack', '--json', '--pack-destination', work], { cwd: ROOT, boundMs: INSTALL_BOUND_MS });
    expect(packed.status, packed.stderr).toBe(0);
    const [manifest] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
    tarballFiles = manifest?.files.map((file) => file.path) ?? [];
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
    const prebuilds = await localSqlitePrebuilds(join(work, 'prebuilds'));
    const installed = await run(NPM, ['install', '--prefer-offline', '--no-audit', '--no-fund', join(work, manifest?.filename ?? '')], {
      cwd: app,
      env: { ...process.env, npm_config_better_sqlite3_local_prebuilds: prebuilds, npm_config_update_notifier: 'false' },
      boundMs: INSTALL_BOUND_MS,
    });
    expect(installed.status, installed.stderr).toBe(0);
  }, INSTALL_BOUND_MS * 2);

  afterAll(async () => {
    for (const child of running.reverse()) await child.stop();
    rmSync(work, { recursive: true, force: true });
  });

  it('ships compiled JavaScript, declarations without internals and the descriptor set; no sources, tests or build info', () => {
    expect(tarballFiles).toEqual(expect.arrayContaining(['package.json', 'bin/control-plane.js', 'bin/agent-host.js', 'dist/agent-host/tools/index.js', 'dist/agent-host/tools/index.d.ts', 'dist/gen/descriptors.binpb']));
    const unexpected = tarballFiles.filter((path) => !/^(package\.json|README\.md|LICENSE|bin\/[\w-]+\.js|dist\/.+\.(js|d\.ts)|dist\/gen\/descriptors\.binpb)$/.test(path));
    expect(unexpected).toEqual([]);
    const installed = join(app, 'node_modules', 'tether');
    // stripInternal: the host's channel-sharing option of AgentClient is not in the published types.
    const declarations = readFileSync(join(installed, 'dist', 'agent-host', 'tools', 'agent-client.d.ts'), 'utf8');
    expect(declarations).toContain('deadlineMs?: number');
    expect(declarations).not.toContain('channel?: grpc.Channel');
    // Nothing of the TypeScript toolchain was installed with it: plain Node runs it.
    expect(existsSync(join(app, 'node_modules', 'tsx'))).toBe(false);
    expect(existsSync(join(app, 'node_modules', 'typescript'))).toBe(false);
  });

  it('exports tether/tools as compiled JavaScript and nothing else', async () => {
    const resolve = (specifier: string): Promise<Run> =>
      run(process.execPath, ['--input-type=module', '-e', `console.log(import.meta.resolve(${JSON.stringify(specifier)}))`], { cwd: app });
    const tools = await resolve('tether/tools');
    expect(tools.status, tools.stderr).toBe(0);
    expect(tools.stdout.trim()).toMatch(/\/node_modules\/tether\/dist\/agent-host\/tools\/index\.js$/);
    const internal = await resolve('tether/dist/control-plane/run.js');
    expect(internal.status).not.toBe(0);
    expect(internal.stderr).toContain('ERR_PACKAGE_PATH_NOT_EXPORTED');
  });

  it('runs both installed binaries, a serve + agent-host pair, and a .mjs agent calling AgentClient.whoAmI through tether/tools', async () => {
    const bin = (name: string): string => join(app, 'node_modules', '.bin', name);
    for (const name of ['control-plane', 'agent-host']) {
      const help = await run(bin(name), ['--help'], { cwd: app });
      expect(help.status, help.stderr).toBe(0);
      expect(help.stdout).toContain(`Usage: ${name}`);
    }

    const adminToken = randomBytes(24).toString('base64url');
    const base = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', TETHER_LOG_LEVEL: 'info' };
    const cp = new Running(bin('control-plane'), ['serve'], app, {
      ...base,
      TETHER_LISTEN: '127.0.0.1:0',
      TETHER_HTTP_LISTEN: '',
      TETHER_DATA_DIR: join(work, 'cp'),
      TETHER_ADMIN_TOKEN: adminToken,
    });
    running.push(cp);
    const serving = await cp.logged('control plane serving');
    const server = `127.0.0.1:${String(serving.port)}`;
    const admin = { ...base, TETHER_SERVER: server, TETHER_ADMIN_TOKEN: adminToken };

    const joinTokenFile = join(work, 'join-token');
    const enrolled = await run(bin('control-plane'), ['hosts', 'enroll', 'packaged', '--token-file', joinTokenFile], { cwd: app, env: admin });
    expect(enrolled.status, enrolled.stderr).toBe(0);
    const host = new Running(bin('agent-host'), ['--allow-command', process.execPath], app, {
      ...base,
      TETHER_SERVER: server,
      TETHER_HOST_DATA_DIR: join(work, 'host'),
      TETHER_JOIN_TOKEN_FILE: joinTokenFile,
      TETHER_HOST_METRICS_LISTEN: '',
    });
    running.push(host);
    await host.logged('connected to control plane');

    writeFileSync(join(app, 'whoami-agent.mjs'), WHOAMI_AGENT);
    const dispatched = await run(bin('control-plane'), ['agents', 'dispatch', '--id', 'packaged-agent', '--command', process.execPath, '--arg', join(app, 'whoami-agent.mjs')], { cwd: app, env: admin });
    expect(dispatched.status, dispatched.stderr).toBe(0);
    const report = join(work, 'host', 'agents', 'packaged-agent', 'whoami.json');
    await waitUntil(() => existsSync(report), 'the agent to write what whoAmI answered');
    const answer = JSON.parse(readFileSync(report, 'utf8')) as { me?: { agentId: string; generation: number; expiresAtMs: number }; error?: string };
    expect(answer.error).toBeUndefined();
    expect(answer.me?.agentId).toBe('packaged-agent');
    expect(answer.me?.generation).toBeGreaterThanOrEqual(1);
  });
});
