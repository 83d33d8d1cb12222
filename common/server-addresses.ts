import { InvalidArgumentError } from './errors.js';

/** The most addresses a server list may hold: each gets a channel of its own. */
export const MAX_SERVER_ADDRESSES = 16;

/**
 * One control-plane address: `host:port`, `[ipv6]:port`, or either after a
 * `dns:` / `dns:///` scheme. No commas (they separate addresses) and no
 * `ipv4:`/`ipv6:` lists (grpc-js's own multi-address syntax would put every
 * address behind one TLS name).
 */
const ADDRESS = /^(?:dns:(?:\/\/\/)?)?(?:\[[0-9a-fA-F:.%]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$/;

/**
 * Splits and checks a comma-separated list of control-plane addresses
 * (`a:7443,b:7443`): at least one, each well formed with a port in 1–65535, no
 * empty entry, no duplicate, at most {@link MAX_SERVER_ADDRESSES}. Surrounding
 * spaces are dropped. Throws InvalidArgumentError naming the bad entry (an
 * address is no secret).
 */
export function parseServerAddresses(list: string): string[] {
  const entries = list.split(',').map((entry) => entry.trim());
  if (entries.length > MAX_SERVER_ADDRESSES) throw new InvalidArgumentError(`at most ${String(MAX_SERVER_ADDRESSES)} addresses, got ${String(entries.length)}`);
  const seen = new Set<string>();
  entries.forEach((entry, index) => {
    const position = entries.length === 1 ? 'the address' : `address ${String(index + 1)} of ${String(entries.length)}`;
    if (entry === '') throw new InvalidArgumentError(`${position} is empty: give host:port, or several as host:port,host:port`);
    const match = ADDRESS.exec(entry);
    const port = Number(match?.[1] ?? 0);
    if (match === null) throw new InvalidArgumentError(`${position} must be host:port (or [ipv6]:port), got ${entry}`);
    if (port < 1 || port > 65_535) throw new InvalidArgumentError(`${position} has port ${String(port)}, not in 1-65535`);
    if (seen.has(entry)) throw new InvalidArgumentError(`${position} repeats ${entry}`);
    seen.add(entry);
  });
  return entries;
}

/** `addresses` in a random order (Fisher–Yates over `random`, uniform on [0, 1)); a new array. */
export function shuffledAddresses(addresses: readonly string[], random: () => number): string[] {
  const order = [...addresses];
  for (let i = order.length - 1; i > 0; i--) {
    const draw = random();
    const u = Number.isNaN(draw) ? 0 : Math.min(Math.max(draw, 0), 0.999_999_999);
    const j = Math.floor(u * (i + 1));
    [order[i], order[j]] = [order[j] as string, order[i] as string];
  }
  return order;
}
