/**
 * Soak instrumentation, preloaded into a child (`node --expose-gc --import
 * ./scripts/support/memory-probe.mjs …`) that was spawned with an IPC channel:
 * answers `{ type: 'memory', id }` with the heap after a full collection, the
 * RSS and the count of open file descriptors. Not part of the product; it only
 * reads. The channel is unreferenced so it never keeps the child alive.
 */
import { readdirSync } from 'node:fs';

if (typeof process.send === 'function') {
  process.on('message', (message) => {
    if (typeof message !== 'object' || message === null || message.type !== 'memory') return;
    globalThis.gc?.();
    const usage = process.memoryUsage();
    process.send?.({
      type: 'memory',
      id: message.id,
      isCollected: typeof globalThis.gc === 'function',
      heapUsedBytes: usage.heapUsed,
      rssBytes: usage.rss,
      openFds: readdirSync('/proc/self/fd').length,
    });
  });
  process.channel?.unref();
}
