import { InvalidArgumentError } from './errors.js';

/** Whether `host` (a name or address, IPv6 bracketed or not) is loopback. */
export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  return bare === 'localhost' || bare === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(bare);
}

/** Splits `host:port` (IPv6 bracketed); throws InvalidArgumentError otherwise. */
export function splitHostPort(address: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(address);
  if (match === null) throw new InvalidArgumentError(`address must be host:port, got ${address}`);
  return { host: match[1] ?? '', port: Number(match[2]) };
}

/** The host part of a gRPC target (`host:port`, `dns:host:port`, `ipv4:…`, `ipv6:[…]:port`). */
export function targetHost(target: string): string {
  const bare = target.replace(/^(dns|ipv4|ipv6):(\/\/[^/]*\/)?/, '');
  const bracketed = /^\[([^\]]+)\]/.exec(bare);
  if (bracketed !== null) return bracketed[1] ?? '';
  const colon = bare.lastIndexOf(':');
  return colon === -1 ? bare : bare.slice(0, colon);
}

/**
 * Refuses to send a token in plaintext anywhere but loopback. Called before a
 * channel is made, so no connection is ever opened to such a target. A
 * comma-separated list of control-plane addresses is checked address by address.
 */
export function assertPlaintextAllowed(target: string): void {
  for (const address of target.split(',')) {
    const host = targetHost(address.trim());
    if (!isLoopback(host)) {
      throw new InvalidArgumentError(`refusing to send a token in plaintext to ${host}: use TLS (a non-loopback target)`);
    }
  }
}
