import { isIPv4, isIPv6 } from 'node:net';

/** Where a call came from: the TCP connection (for per-connection bounds) and the source it is counted under. */
export interface PeerSource {
  /** The connection: remote address and port, as grpc-js reports it (unique among open connections). */
  connection: string;
  /**
   * What a failure is counted against: the IPv4 address, or the /64 an IPv6
   * address is in (one subscriber gets a whole /64 for free, so a single
   * address would be a key an attacker chooses at no cost). `unknown` when
   * grpc-js cannot say.
   */
  source: string;
}

/** The first four groups (the /64) of an IPv6 address, written out in full. */
function ipv6Prefix64(address: string): string {
  const [head = '', tail] = address.split('::', 2);
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':');
  // An embedded IPv4 tail (`::ffff:1.2.3.4`, `64:ff9b::1.2.3.4`) is two groups; only its count matters for the /64.
  const groupCount = (groups: string[]): number => groups.reduce((n, g) => n + (g.includes('.') ? 2 : 1), 0);
  const zeros = tail === undefined ? 0 : 8 - groupCount(headGroups) - groupCount(tailGroups);
  const groups = [...headGroups, ...Array.from({ length: Math.max(0, zeros) }, () => '0'), ...tailGroups];
  return `${groups
    .slice(0, 4)
    .map((g) => (g.includes('.') ? g : g.toLowerCase().padStart(4, '0')))
    .join(':')}::/64`;
}

/**
 * Reads `call.getPeer()` (`1.2.3.4:5678`, or `::1:5678`: grpc-js writes IPv6
 * without brackets) into the connection it names and the source a limiter may
 * count against. An IPv4-mapped IPv6 address counts as its IPv4 address.
 */
export function peerSource(peer: string): PeerSource {
  const colon = peer.lastIndexOf(':');
  let address = colon > 0 && /^\d+$/.test(peer.slice(colon + 1)) ? peer.slice(0, colon) : peer;
  if (address.startsWith('[') && address.endsWith(']')) address = address.slice(1, -1);
  // No port after all (grpc-js adds one whenever the socket has it): the whole string may be the address.
  if (!isIPv4(address) && !isIPv6(address)) address = peer;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped?.[1] !== undefined) address = mapped[1];
  if (isIPv4(address)) return { connection: peer, source: address };
  if (isIPv6(address)) return { connection: peer, source: ipv6Prefix64(address) };
  return { connection: peer, source: 'unknown' };
}
