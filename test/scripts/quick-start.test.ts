import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { assertNoSecrets } from '../support/secrets.js';
import { HANG_BOUND_MS } from '../support/wait.js';

const ROOT = join(import.meta.dirname, '..', '..');

/** Resolves with everything printed up to `line`, or fails if the process exits first or hangs. */
function waitForLine(child: ChildProcess, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no "${line}" within the hang bound; got:\n${out}`)), HANG_BOUND_MS * 2);
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      if (out.includes(`${line}\n`)) {
        clearTimeout(timer);
        resolve(out);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before "${line}":\n${out}`));
    });
  });
}

describe('npm start', () => {
  let child: ChildProcess | undefined;
  let dataDir: string | undefined;
  afterEach(() => {
    if (child?.exitCode === null) child.kill('SIGKILL');
    if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true });
  });

  it('prints a ready line, and its buf curl commands work as printed', async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'tether-quick-start-'));
    child = spawn(process.execPath, ['--import', 'tsx', 'scripts/start.ts'], {
      cwd: ROOT,
      env: { ...process.env, TETHER_DATA_DIR: dataDir, TETHER_LISTEN: '127.0.0.1:0', TETHER_HTTP_LISTEN: '127.0.0.1:0', TETHER_LOG_LEVEL: 'debug' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const printed = await waitForLine(child, 'tether: ready');

    // The buf curl block, run verbatim.
    const block = printed.slice(printed.indexOf('With buf curl'), printed.indexOf('With grpcurl'));
    const commands = block
      .split('\n')
      .filter((line) => line.startsWith('  $ '))
      .map((line) => line.slice(4));
    const byTitle = (fragment: string): string => {
      const found = commands.find((command) => command.includes(fragment));
      if (found === undefined) throw new Error(`no printed command with ${fragment}`);
      return found;
    };
    const run = (command: string): string => {
      const result = spawnSync('sh', ['-c', command], { cwd: ROOT, encoding: 'utf8', timeout: HANG_BOUND_MS });
      expect(result.status, `${command}\n${result.stderr}`).toBe(0);
      return result.stdout;
    };
    const services = run(byTitle('--list-services'));
    expect(services.split('\n')).toEqual(
      expect.arrayContaining(['grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection', 'tether.v1.AdminService', 'tether.v1.AgentService', 'tether.v1.HostService']),
    );
    // The JWKS as structured JSON: keys as objects a script can read, the same ones /.well-known/jwks.json serves.
    const jwks = JSON.parse(run(byTitle('AdminService/GetJwks'))) as { keys: { kty: string; crv: string; kid: string; alg: string; use: string; x: string }[] };
    expect(jwks.keys.length).toBeGreaterThan(0);
    for (const key of jwks.keys) expect(key).toMatchObject({ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA', use: 'sig', kid: expect.any(String) as string, x: expect.any(String) as string });
    expect(JSON.parse(run(byTitle('grpc.health.v1.Health/Check')))).toEqual({ status: 'SERVING' });
    const agents = JSON.parse(run(byTitle('AdminService/ListAgents'))) as { agents: { agentId: string; state: string }[] };
    expect(agents.agents.map((agent) => agent.agentId)).toContain('demo-agent');
    const described = JSON.parse(run(byTitle('AdminService/DescribeAgent'))) as { agent: { agentId: string }; transitions: { toState: string; reason: string }[] };
    expect(described.agent.agentId).toBe('demo-agent');
    expect(described.transitions[0]).toMatchObject({ toState: 'AGENT_STATE_PENDING', reason: 'created by ensure' });

    // Graceful shutdown, and nothing secret in the debug log it wrote.
    const exited = new Promise<number | null>((resolve) => child?.once('exit', resolve));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const adminToken = readFileSync(join(dataDir, 'admin-token'), 'utf8').trim();
    const log = readFileSync(join(dataDir, 'tether.log'), 'utf8');
    expect(log).toContain('"jti"');
    assertNoSecrets(log, [adminToken], 'the quick start log');
  });
});
