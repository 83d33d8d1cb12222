/**
 * Soak instrumentation, preloaded into a child (`node --expose-gc --import
 * ./scripts/support/memory-probe.mjs …`) that was spawned with an IPC channel:
 * answers `{ type: 'memory', id }` with the heap after a full collection, the
 * RSS and the count of open file descriptors (and writes a heap snapshot to
 * `snapshotPath` if the request names one). Not part of the product; it only
 * reads. The channel is unreferenced so it never keeps the child alive, and
 * the child exits if the channel goes (its parent died), so no soak leaves an
 * orphan control plane behind.
 */
import { readdirSync } from 'node:fs';
import { writeHeapSnapshot } from 'node:v8';

if (typeof process.send === 'function') {
  process.on('message', (message) => {
    if (typeof message !== 'object' || message === null || message.type !== 'memory') return;
    globalThis.gc?.();
    // For diagnosis: a heap snapshot beside the figures, when asked for one.
    const snapshotPath = typeof message.snapshotPath === 'string' ? writeHeapSnapshot(message.snapshotPath) : undefined;
    if (snapshotPath !== undefined) globalThis.gc?.();
    const usage = process.memoryUsage();
    process.send?.({
      type: 'memory',
      id: message.id,
      isCollected: typeof globalThis.gc === 'function',
      heapUsedBytes: usage.heapUsed,
      rssBytes: usage.rss,
      openFds: readdirSync('/proc/self/fd').length,
      snapshotPath,
    });
  });
  process.channel?.unref();
  // The soak that started this child is gone (crashed, killed): so is the reason to run.
  process.on('disconnect', () => process.exit(1));
}
