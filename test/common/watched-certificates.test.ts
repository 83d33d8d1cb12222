/**
 * WatchedCertificates on real files and the fake clock: bad files at start
 * are refused with a message naming the file, never its content; a listener
 * gets the current files on the next tick (grpc-js subscribes before it
 * registers its watcher); a poll takes a good replacement, keeps the current
 * files for a bad one (reported once), and stops at close.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../common/errors.js';
import { WatchedCertificates } from '../../common/watched-certificates.js';
import { FakeClock } from '../support/fake-clock.js';
import { LogCapture } from '../support/log-capture.js';
import { selfSignedCert } from '../support/tls-cert.js';
import { advanceUntil } from '../support/advance-until.js';

describe('WatchedCertificates', () => {
  const dirs: string[] = [];
  const watchers: WatchedCertificates[] = [];
  afterEach(async () => {
    for (const watcher of watchers.splice(0)) await watcher.close();
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });
  const fileWith = (name: string, content: Buffer | string): string => {
    const dir = dirs[0] ?? mkdtempSync(join(tmpdir(), 'tether-watched-'));
    if (dirs.length === 0) dirs.push(dir);
    const path = join(dir, name);
    writeFileSync(path, content);
    return path;
  };

  it('refuses bad files at start, naming the file and never its content', () => {
    const a = selfSignedCert();
    const b = selfSignedCert();
    const clock = new FakeClock();
    const cases: [Parameters<typeof WatchedCertificates.open>[0], string][] = [
      [{ certFile: fileWith('a.crt', a.certPem), keyFile: fileWith('b.key', b.keyPem), clock }, 'does not match the certificate'],
      [{ certFile: fileWith('a.crt', a.certPem), keyFile: join(tmpdir(), 'tether-no-such-dir', 'absent.key'), clock }, '(ENOENT)'],
      [{ certFile: fileWith('junk.crt', 'not a certificate'), keyFile: fileWith('a.key', a.keyPem), clock }, 'holds no PEM certificate'],
      [{ certFile: fileWith('a.crt', a.certPem), keyFile: fileWith('junk.key', 'not a key'), clock }, 'holds no usable PEM private key'],
      [{ caFile: fileWith('junk-ca.pem', 'nothing'), clock }, 'holds no PEM CA certificate'],
      [{ certFile: fileWith('a.crt', a.certPem), clock }, 'a certificate and its key go together'],
    ];
    for (const [options, message] of cases) {
      let thrown: unknown;
      try {
        watchers.push(WatchedCertificates.open(options));
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toBeInstanceOf(InvalidArgumentError);
      expect((thrown as Error).message).toContain(message);
      expect((thrown as Error).message).not.toContain('PRIVATE KEY');
    }
  });

  it('hands the current CA to a listener on the next tick; a poll takes a good replacement, and keeps it for a bad one, reported once', async () => {
    const a = selfSignedCert();
    const b = selfSignedCert();
    const clock = new FakeClock();
    const logs = new LogCapture();
    const caFile = fileWith('ca.pem', a.certPem);
    const watcher = WatchedCertificates.open({ caFile, clock, logger: logs.logger, pollIntervalMs: 1_000 });
    watchers.push(watcher);
    const updates: (grpc.experimental.CaCertificateUpdate | null)[] = [];
    watcher.addCaCertificateListener((update) => updates.push(update));
    expect(updates).toEqual([]);
    await new Promise((resolve) => process.nextTick(resolve));
    expect(updates.map((u) => u?.caCertificate.toString())).toEqual([a.certPem.toString()]);

    writeFileSync(caFile, b.certPem);
    await advanceUntil(clock, 1_000, () => updates.length === 2, 'the new CA handed over');
    expect(updates[1]?.caCertificate.toString()).toBe(b.certPem.toString());

    writeFileSync(caFile, '-----BEGIN CERTIFICATE-----\ntruncated');
    await advanceUntil(clock, 1_000, () => logs.text().includes('holds no PEM CA certificate'), 'the bad CA reported');
    // More polls of the same bad file: no update, no second report.
    for (let i = 0; i < 3; i++) await watcher.checkNow();
    expect(updates).toHaveLength(2);
    expect(logs.records().filter((r) => r.msg === 'TLS files changed but cannot be used; keeping the current ones')).toHaveLength(1);
  });
});
