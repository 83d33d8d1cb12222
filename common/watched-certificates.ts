import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import type * as grpc from '@grpc/grpc-js';
import type { Clock } from './clock.js';
import { InvalidArgumentError } from './errors.js';
import type { Logger } from './logger.js';

type CertificateProvider = grpc.experimental.CertificateProvider;
type IdentityUpdate = grpc.experimental.IdentityCertificateUpdate;
type CaUpdate = grpc.experimental.CaCertificateUpdate;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;
type CaListener = grpc.experimental.CaCertificateUpdateListener;

/** How often the files are read again, by default. */
export const DEFAULT_CERTIFICATE_POLL_MS = 10_000;

/** A certificate, key or CA file larger than this is refused (a PEM chain is a few KiB). */
export const MAX_CERTIFICATE_FILE_BYTES = 1024 * 1024;

/** Options of {@link WatchedCertificates}. */
export interface WatchedCertificatesOptions {
  /** A PEM certificate (chain) and its private key: the identity a server presents. Both or neither. */
  certFile?: string;
  keyFile?: string;
  /** A PEM CA certificate (bundle): what a client verifies the server with. */
  caFile?: string;
  /** Polls wait on it. */
  clock: Clock;
  /** Where reloads and refused files are reported (never any file's content). */
  logger?: Logger;
  /** How often the files are read again. Default {@link DEFAULT_CERTIFICATE_POLL_MS}. */
  pollIntervalMs?: number;
}

/** What is known of one accepted certificate: for logs and tests, never secret. */
export interface CertificateSummary {
  /** SHA-256 fingerprint, colon-separated hex, as `X509Certificate.fingerprint256`. */
  fingerprint256: string;
  serialNumber: string;
  validTo: string;
}

/**
 * TLS files that are read again every `pollIntervalMs` (on the injected
 * clock) and handed to grpc-js as a `CertificateProvider`
 * (`grpc.experimental.createCertificateProviderServerCredentials` for a
 * server's certificate and key, `createCertificateProviderChannelCredentials`
 * for a client's CA), so new TLS connections use the files' current content
 * without a restart; connections already open keep theirs.
 *
 * A change is taken only once it checks out: the certificate parses, the key
 * parses and matches it (`X509Certificate.checkPrivateKey`), and Node builds a
 * secure context from them (a CA: parses, and builds one). Otherwise, and for
 * an unreadable or oversized file, the current ones are kept and one warning
 * says why (once per bad content), naming the files, never their content: a
 * certificate and key written one after the other are a mismatched pair for a
 * moment, and grpc-js given a bad pair would drop every new connection. Files
 * that are bad at start throw from {@link WatchedCertificates.open}.
 *
 * grpc-js's own `FileWatcherCertificateProvider` re-reads on a timer of its
 * own (not the injected clock) and passes on whatever it read, unchecked.
 */
export class WatchedCertificates implements CertificateProvider {
  readonly #options: WatchedCertificatesOptions;
  readonly #pollIntervalMs: number;
  #identity: IdentityUpdate | undefined;
  #ca: CaUpdate | undefined;
  #summary: CertificateSummary | undefined;
  /** Hash of what was last accepted or refused, so an unchanged file is neither checked nor reported again. */
  #lastSeenHash: string;
  /** The last read failure reported, so a file that stays unreadable is reported once. */
  #lastReadFailure: string | undefined;
  readonly #identityListeners = new Set<IdentityListener>();
  readonly #caListeners = new Set<CaListener>();
  readonly #closing = new AbortController();
  readonly #polling: Promise<void>;

  private constructor(options: WatchedCertificatesOptions) {
    this.#options = options;
    this.#pollIntervalMs = Math.max(1, options.pollIntervalMs ?? DEFAULT_CERTIFICATE_POLL_MS);
    const contents = readAllSync(options);
    const checked = check(options, contents);
    if (typeof checked === 'string') throw new InvalidArgumentError(checked);
    this.#accept(checked, false);
    this.#lastSeenHash = hashOf(contents);
    this.#polling = this.#poll();
  }

  /**
   * Reads and checks the files now (InvalidArgumentError naming what is wrong,
   * never the content) and starts watching them. The caller owns the result: `close()` it.
   */
  static open(options: WatchedCertificatesOptions): WatchedCertificates {
    if ((options.certFile === undefined) !== (options.keyFile === undefined)) throw new InvalidArgumentError('a certificate and its key go together');
    if (options.certFile === undefined && options.caFile === undefined) throw new InvalidArgumentError('no certificate file to watch');
    return new WatchedCertificates(options);
  }

  /** The certificate served now (undefined for a CA-only watcher). */
  get certificate(): CertificateSummary | undefined {
    return this.#summary;
  }

  /** Reads the files once now, as a poll would (tests, or an operator's signal). */
  async checkNow(): Promise<void> {
    const options = this.#options;
    let contents: FileContents;
    try {
      contents = await readAll(options);
    } catch (err) {
      const reason = describeReadFailure(err);
      if (reason !== this.#lastReadFailure) this.#refuse(reason);
      this.#lastReadFailure = reason;
      return;
    }
    this.#lastReadFailure = undefined;
    const hash = hashOf(contents);
    if (hash === this.#lastSeenHash) return;
    this.#lastSeenHash = hash;
    const checked = check(options, contents);
    if (typeof checked === 'string') {
      this.#refuse(checked);
      return;
    }
    this.#accept(checked, true);
    if (checked.identity !== undefined) for (const listener of this.#identityListeners) listener(checked.identity);
    if (checked.ca !== undefined) for (const listener of this.#caListeners) listener(checked.ca);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.#identityListeners.add(listener);
    // On the next tick, as grpc-js's own provider does: its server credentials subscribe before they register
    // the server's watcher, and an update delivered synchronously would reach no one.
    if (this.#identity !== undefined) process.nextTick(listener, this.#identity);
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.#identityListeners.delete(listener);
  }

  addCaCertificateListener(listener: CaListener): void {
    this.#caListeners.add(listener);
    if (this.#ca !== undefined) process.nextTick(listener, this.#ca);
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.#caListeners.delete(listener);
  }

  /** Stops watching (the last accepted files stay in use by whoever has them). Idempotent. */
  async close(): Promise<void> {
    this.#closing.abort();
    await this.#polling;
  }

  #accept(checked: Checked, isReload: boolean): void {
    const previous = this.#summary;
    if (checked.identity !== undefined) this.#identity = checked.identity;
    if (checked.ca !== undefined) this.#ca = checked.ca;
    if (checked.summary !== undefined) this.#summary = checked.summary;
    if (!isReload) return;
    if (checked.summary !== undefined) {
      this.#options.logger?.info(
        { certFile: this.#options.certFile, ...checked.summary, previousFingerprint256: previous?.fingerprint256 },
        'TLS certificate reloaded: new connections use it',
      );
    }
    if (checked.ca !== undefined) this.#options.logger?.info({ caFile: this.#options.caFile }, 'TLS CA file reloaded: new connections verify with it');
  }

  #refuse(reason: string): void {
    this.#options.logger?.warn(
      { certFile: this.#options.certFile, keyFile: this.#options.keyFile, caFile: this.#options.caFile, reason },
      'TLS files changed but cannot be used; keeping the current ones',
    );
  }

  async #poll(): Promise<void> {
    const signal = this.#closing.signal;
    while (!signal.aborted) {
      await this.#options.clock.sleep(this.#pollIntervalMs, signal);
      if (signal.aborted) return;
      await this.checkNow();
    }
  }
}

/** The raw content of the watched files. */
interface FileContents {
  cert?: Buffer;
  key?: Buffer;
  ca?: Buffer;
}

/** Files that checked out. */
interface Checked {
  identity?: IdentityUpdate;
  ca?: CaUpdate;
  summary?: CertificateSummary;
}

function readAllSync(options: WatchedCertificatesOptions): FileContents {
  const read = (path: string): Buffer => {
    try {
      return bounded(readFileSync(path), path);
    } catch (err) {
      throw new InvalidArgumentError(describeReadFailure(err), { cause: err });
    }
  };
  return {
    ...(options.certFile === undefined ? {} : { cert: read(options.certFile) }),
    ...(options.keyFile === undefined ? {} : { key: read(options.keyFile) }),
    ...(options.caFile === undefined ? {} : { ca: read(options.caFile) }),
  };
}

async function readAll(options: WatchedCertificatesOptions): Promise<FileContents> {
  const read = async (path: string): Promise<Buffer> => bounded(await readFile(path), path);
  const [cert, key, ca] = await Promise.all([
    options.certFile === undefined ? undefined : read(options.certFile),
    options.keyFile === undefined ? undefined : read(options.keyFile),
    options.caFile === undefined ? undefined : read(options.caFile),
  ]);
  return { ...(cert === undefined ? {} : { cert }), ...(key === undefined ? {} : { key }), ...(ca === undefined ? {} : { ca }) };
}

/** A file read failed or was too large: said with its path and error code, never a byte of it. */
class CertificateFileError extends Error {}

function bounded(content: Buffer, path: string): Buffer {
  if (content.length > MAX_CERTIFICATE_FILE_BYTES) throw new CertificateFileError(`${path} is larger than ${String(MAX_CERTIFICATE_FILE_BYTES)} bytes`);
  return content;
}

function describeReadFailure(err: unknown): string {
  if (err instanceof CertificateFileError) return err.message;
  const { code, path } = err as { code?: string; path?: string };
  return `cannot read ${path ?? 'a TLS file'}${code === undefined ? '' : ` (${code})`}`;
}

function hashOf(contents: FileContents): string {
  const hash = createHash('sha256');
  for (const part of [contents.cert, contents.key, contents.ca]) {
    hash.update(String(part?.length ?? -1));
    hash.update(':');
    if (part !== undefined) hash.update(part);
  }
  return hash.digest('hex');
}

/** The files checked, or why they cannot be used (a reason naming files, never content). */
function check(options: WatchedCertificatesOptions, contents: FileContents): Checked | string {
  const checked: Checked = {};
  if (contents.cert !== undefined && contents.key !== undefined) {
    let certificate: X509Certificate;
    try {
      certificate = new X509Certificate(contents.cert);
    } catch {
      return `${options.certFile ?? 'the certificate'} holds no PEM certificate`;
    }
    let isMatch: boolean;
    try {
      isMatch = certificate.checkPrivateKey(createPrivateKey(contents.key));
    } catch {
      return `${options.keyFile ?? 'the key'} holds no usable PEM private key (an encrypted key is not supported)`;
    }
    if (!isMatch) return `the private key in ${options.keyFile ?? 'the key file'} does not match the certificate in ${options.certFile ?? 'the certificate file'}`;
    try {
      createSecureContext({ cert: contents.cert, key: contents.key });
    } catch {
      return `TLS refuses the certificate in ${options.certFile ?? 'the certificate file'} with its key`;
    }
    checked.identity = { certificate: contents.cert, privateKey: contents.key };
    checked.summary = { fingerprint256: certificate.fingerprint256, serialNumber: certificate.serialNumber, validTo: certificate.validTo };
  }
  if (contents.ca !== undefined) {
    try {
      new X509Certificate(contents.ca);
      createSecureContext({ ca: contents.ca });
    } catch {
      return `${options.caFile ?? 'the CA file'} holds no PEM CA certificate`;
    }
    checked.ca = { caCertificate: contents.ca };
  }
  return checked;
}
