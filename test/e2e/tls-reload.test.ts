/**
 * TLS reload (issue 19, Show 4), on real servers: the right CA connects and a
 * wrong one fails with a clear error (the CLI prints one line, no stack);
 * replacing the certificate files switches NEW connections to the new
 * certificate without a restart (a fresh TLS client sees its fingerprint, and
 * gRPC with only the new CA connects); a mismatched or unreadable pair keeps
 * the old certificate and a log line says why, with no key material; a host
 * whose CA file is replaced (the certificate rotated to one from a new CA)
 * reconnects with the new CA.
 */
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import { callCredentials } from '../../agent-host/tools/call-credentials.js';
import { caFileCredentials } from '../../agent-host/tools/ca-file-credentials.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { advanceUntil } from '../support/advance-until.js';
import { runControlPlaneCli } from '../support/control-plane-cli.js';
import { ControlPlaneProcess } from '../support/control-plane-process.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { call, Harness, idleModule, statusOf } from '../support/harness.js';
import { selfSignedCert, type SelfSignedCert } from '../support/tls-cert.js';
import { nextEvent } from '../support/wait.js';

const POLL_MS = 1_000;

/** The fingerprint of the certificate a fresh TLS client (ALPN h2, as gRPC) is shown on `port`. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ALPNProtocols: ['h2'], rejectUnauthorized: false, servername: 'localhost' }, () => {
      const fingerprint = socket.getPeerX509Certificate()?.fingerprint256 ?? '';
      socket.destroy();
      resolve(fingerprint);
    });
    socket.once('error', reject);
  });
}

function fingerprintOf(cert: SelfSignedCert): string {
  return new X509Certificate(cert.certPem).fingerprint256;
}

describe('TLS reload', () => {
  let harness: Harness | undefined;
  let dir: string | undefined;
  const owned: { close: () => unknown }[] = [];
  afterEach(async () => {
    for (const item of owned.splice(0).reverse()) await item.close();
    await harness?.close();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    harness = undefined;
    dir = undefined;
  });

  /** A control plane serving TLS from files it watches (fake clock: a poll every POLL_MS). */
  async function tlsControlPlane(first: SelfSignedCert): Promise<{ h: Harness; certFile: string; keyFile: string; caFile: (cert: SelfSignedCert) => string }> {
    dir = mkdtempSync(join(tmpdir(), 'tether-tls-reload-'));
    const certFile = join(dir, 'tls.crt');
    const keyFile = join(dir, 'tls.key');
    writeFileSync(certFile, first.certPem);
    writeFileSync(keyFile, first.keyPem, { mode: 0o600 });
    const h = await Harness.start({ tlsFiles: { certFile, keyFile, pollIntervalMs: POLL_MS } });
    harness = h;
    let n = 0;
    const base = dir;
    const caFile = (cert: SelfSignedCert): string => {
      const path = join(base, `ca-${String(n++)}.pem`);
      writeFileSync(path, cert.certPem);
      return path;
    };
    return { h, certFile, keyFile, caFile };
  }

  /** An admin client verifying with `ca` only. */
  function adminWith(h: Harness, ca: Buffer): AdminServiceClient {
    const client = new AdminServiceClient(h.target, grpc.credentials.combineChannelCredentials(grpc.credentials.createSsl(ca), callCredentials({ get: () => h.adminToken })), {
      'grpc.use_local_subchannel_pool': 1,
    });
    owned.push(client);
    return client;
  }

  const listHosts = (admin: AdminServiceClient): Promise<unknown> => call(admin.listHosts.bind(admin), { pageSize: 0, pageToken: '' });

  it('right CA connects; a wrong CA fails, and the CLI says so in one line', async () => {
    const a = selfSignedCert();
    const other = selfSignedCert();
    const { h, caFile } = await tlsControlPlane(a);
    expect(await statusOf(listHosts(adminWith(h, a.certPem)))).toBe('ok');
    const wrong = await listHosts(adminWith(h, other.certPem)).catch((err: unknown) => err as grpc.ServiceError);
    expect((wrong as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
    expect((wrong as grpc.ServiceError).details).toMatch(/certificate/i);

    // By name: grpc-js sends an IP target as the TLS server name, which Node warns about on stderr (DEP0123).
    const env = { PATH: process.env.PATH ?? '', TETHER_ADMIN_TOKEN: h.adminToken, TETHER_SERVER: `localhost:${String(h.cp.port)}` };
    const right = await runControlPlaneCli(['--ca-file', caFile(a), 'hosts', 'ls', '-o', 'json'], env);
    expect(right.stderr).toBe('');
    expect(right.status).toBe(0);
    const refused = await runControlPlaneCli(['--ca-file', caFile(other), 'hosts', 'ls'], env);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/^error: the control plane at localhost:\d+ presented a certificate the CA in --ca-file does not verify \(.*certificate.*\): check --ca-file \/ TETHER_CA_FILE\n$/);
  });

  it('replacing the certificate files switches new connections to the new certificate; a mismatched or unreadable pair keeps it, and the log says why', async () => {
    const a = selfSignedCert();
    const b = selfSignedCert();
    const c = selfSignedCert();
    const { h, certFile, keyFile } = await tlsControlPlane(a);
    expect(await servedFingerprint(h.cp.port)).toBe(fingerprintOf(a));
    const beforeRotation = adminWith(h, a.certPem);
    expect(await statusOf(listHosts(beforeRotation))).toBe('ok');

    writeFileSync(certFile, b.certPem);
    writeFileSync(keyFile, b.keyPem);
    await advanceUntil(h.clock, POLL_MS, async () => (await servedFingerprint(h.cp.port)) === fingerprintOf(b), 'the new certificate served');
    // gRPC with only the new CA connects; with only the old one, a new connection is refused.
    expect(await statusOf(listHosts(adminWith(h, b.certPem)))).toBe('ok');
    expect(await statusOf(listHosts(adminWith(h, a.certPem)))).toBe(grpc.status.UNAVAILABLE);
    // A connection made before the switch keeps its session.
    expect(await statusOf(listHosts(beforeRotation))).toBe('ok');
    expect(h.logs.text()).toContain('TLS certificate reloaded');

    // A certificate with another pair's key: kept out.
    writeFileSync(certFile, c.certPem);
    await advanceUntil(h.clock, POLL_MS, () => h.logs.text().includes('does not match the certificate'), 'the mismatch reported');
    expect(await servedFingerprint(h.cp.port)).toBe(fingerprintOf(b));
    expect(await statusOf(listHosts(adminWith(h, b.certPem)))).toBe('ok');

    // The key file gone: kept out too.
    unlinkSync(keyFile);
    await advanceUntil(h.clock, POLL_MS, () => h.logs.text().includes('(ENOENT)'), 'the unreadable key reported');
    expect(await servedFingerprint(h.cp.port)).toBe(fingerprintOf(b));

    // Once the pair is whole again, it is taken.
    writeFileSync(keyFile, c.keyPem);
    await advanceUntil(h.clock, POLL_MS, async () => (await servedFingerprint(h.cp.port)) === fingerprintOf(c), 'the repaired pair served');

    const refusals = h.logs.records().filter((r) => r.msg === 'TLS files changed but cannot be used; keeping the current ones');
    expect(refusals.length).toBe(2);
    for (const key of [a, b, c]) {
      const body = key.keyPem.toString('utf8').split('\n').filter((line) => line.length > 20 && !line.startsWith('-----'));
      for (const line of body) expect(h.logs.text()).not.toContain(line);
    }
    expect(h.logs.text()).not.toContain('PRIVATE KEY');
  });

  it('a host whose CA file is replaced (its control plane now has a certificate from a new CA) reconnects with the new CA', async () => {
    const a = selfSignedCert();
    const b = selfSignedCert();
    const { h, certFile, keyFile, caFile } = await tlsControlPlane(a);
    const hostCaFile = caFile(a);
    const ca = caFileCredentials(hostCaFile, { clock: h.clock, pollIntervalMs: POLL_MS, logger: h.logs.logger });
    owned.push(ca);
    // Through a proxy, so the test can cut the host's connection and make it open a new one.
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    owned.push(proxy);
    const admin = adminWith(h, a.certPem);
    const enrolled = await call(admin.enrollHost.bind(admin), { name: 'tls-ca-host', joinTtlMs: 0 });
    const host = AgentHost.start({
      target: proxy.target,
      clock: h.clock,
      logger: h.logs.logger,
      credentialStore: new MemoryHostCredentialStore(),
      joinToken: enrolled.joinToken,
      channelCredentials: ca.credentials,
      modules: new Map([['idle', idleModule]]),
      reconnectMinDelayMs: 10,
      reconnectMaxDelayMs: 50,
      isSelfFenceEnabled: false,
    });
    owned.push(host);
    await nextEvent(host.events, 'connected');

    // The certificate rotates to one from a new CA; the host's CA file is replaced with that CA.
    writeFileSync(certFile, b.certPem);
    writeFileSync(keyFile, b.keyPem);
    writeFileSync(hostCaFile, b.certPem);
    await advanceUntil(
      h.clock,
      POLL_MS,
      () => h.logs.text().includes('TLS certificate reloaded') && h.logs.text().includes('TLS CA file reloaded'),
      'both files reloaded',
    );
    const connections = { count: 0 };
    host.events.on('connected', () => connections.count++);
    proxy.cutAll();
    await advanceUntil(h.clock, 10, () => connections.count > 0, 'the host to reconnect, verifying the new certificate with the new CA');
    expect(host.state).toBe('connected');
    expect(await servedFingerprint(proxy.port)).toBe(fingerprintOf(b));
  });

  it('the real binary serves --tls-cert/--tls-key from the watched files, and refuses a mismatched pair at start without quoting it', async () => {
    const a = selfSignedCert();
    const b = selfSignedCert();
    dir = mkdtempSync(join(tmpdir(), 'tether-tls-binary-'));
    const write = (name: string, content: Buffer): string => {
      const path = join(dir ?? '', name);
      writeFileSync(path, content, { mode: 0o600 });
      return path;
    };
    const [certA, keyA, keyB, caA] = [write('a.crt', a.certPem), write('a.key', a.keyPem), write('b.key', b.keyPem), write('ca-a.pem', a.certPem)];
    const adminToken = 'binary-tls-admin-token-0123456789abcdef';
    const cp = await ControlPlaneProcess.start({ dataDir: join(dir, 'data'), adminToken, args: ['--tls-cert', certA, '--tls-key', keyA, '--http-listen', ''] });
    owned.push({ close: () => cp.stop() });
    expect(await servedFingerprint(cp.port)).toBe(fingerprintOf(a));
    const env = { PATH: process.env.PATH ?? '', TETHER_ADMIN_TOKEN: adminToken, TETHER_SERVER: `localhost:${String(cp.port)}` };
    const listed = await runControlPlaneCli(['--ca-file', caA, 'hosts', 'ls', '-o', 'json'], env);
    expect(listed.stderr).toBe('');
    expect(JSON.parse(listed.stdout)).toEqual([]);

    const refused = await runControlPlaneCli(['serve', '--data-dir', join(dir, 'data-2'), '--listen', '127.0.0.1:0', '--http-listen', '', '--tls-cert', certA, '--tls-key', keyB], env);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain(`the private key in ${keyB} does not match the certificate in ${certA}`);
    expect(refused.stderr).not.toContain('PRIVATE KEY');
    expect(refused.stderr).not.toContain('    at ');
  });
});
