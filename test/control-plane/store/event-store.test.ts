/** The EventStore contract on the embedded store (a fresh SQLite file per case) and on the in-memory fallback. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { MemoryEventStore } from '../../../control-plane/store/memory-event-store.js';
import { eventStoreContract } from '../../support/event-store-contract.js';

eventStoreContract('SqliteStore', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tether-event-store-'));
  const store = SqliteStore.open(join(dir, 'tether.db'));
  return Promise.resolve({
    store,
    close: async () => {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  });
});

eventStoreContract('MemoryEventStore', () => Promise.resolve({ store: new MemoryEventStore(), close: () => Promise.resolve() }));
