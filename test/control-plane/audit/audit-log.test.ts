/**
 * The audit log stays within its bounds: by count as records are appended (a
 * prune every 1% of the bound), and by age on the clock (a sweep every tenth of
 * the age, at least a minute); a record the store refuses is logged as lost,
 * never thrown at the call it describes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../../control-plane/audit/audit-log.js';
import { SqliteStore } from '../../../control-plane/store/sqlite-store.js';
import { FakeClock } from '../../support/fake-clock.js';
import { LogCapture } from '../../support/log-capture.js';
import { waitUntil } from '../../support/wait.js';

const HOUR_MS = 3_600_000;

describe('AuditLog', () => {
  let dir: string;
  let store: SqliteStore;
  let clock: FakeClock;
  let logs: LogCapture;
  let audit: AuditLog | undefined;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tether-audit-log-'));
    store = SqliteStore.open(join(dir, 'tether.db'));
    clock = new FakeClock();
    logs = new LogCapture();
  });

  afterEach(async () => {
    await audit?.close();
    audit = undefined;
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const count = async (): Promise<number> => (await store.listAudit({ afterId: 0, limit: 1_000_000 })).length;
  const entry = { tokenId: 'bootstrap', method: 'ListAgents', targets: [], code: 0 };

  it('keeps at most the newest maxRecords (plus 1% between prunes), the oldest going first', async () => {
    audit = new AuditLog({ store, clock, logger: logs.logger, maxAgeMs: 24 * HOUR_MS, maxRecords: 200 });
    for (let i = 0; i < 450; i++) await audit.record({ ...entry, targets: [{ kind: 'seq', id: String(i) }] });
    const kept = await store.listAudit({ afterId: 0, limit: 1_000 });
    expect(kept.length).toBeGreaterThanOrEqual(200);
    expect(kept.length).toBeLessThanOrEqual(202);
    expect(kept.at(-1)?.targets).toEqual([{ kind: 'seq', id: '449' }]);
    expect(kept[0]?.targets).toEqual([{ kind: 'seq', id: String(450 - kept.length) }]);
  });

  it('prunes records older than maxAgeMs on a sweep of the clock', async () => {
    audit = new AuditLog({ store, clock, logger: logs.logger, maxAgeMs: 10 * HOUR_MS, maxRecords: 1_000 });
    audit.start();
    await audit.record(entry);
    clock.advance(5 * HOUR_MS);
    await audit.record(entry);
    // The sweep runs every hour (a tenth of 10 h); at 10 h + 1 h the first record is past its age, the second not.
    for (let i = 0; i < 6; i++) {
      await waitUntil(() => clock.pendingTimers > 0, 'the audit sweep waiting on the clock');
      clock.advance(HOUR_MS);
    }
    await waitUntil(async () => (await count()) === 1, 'the old record pruned');
    const [left] = await store.listAudit({ afterId: 0, limit: 10 });
    expect(left?.atMs).toBe(clock.now() - 6 * HOUR_MS);
  });

  it('logs a record the store refuses as lost (method, token id, code) and does not throw', async () => {
    audit = new AuditLog({ store, clock, logger: logs.logger, maxAgeMs: HOUR_MS, maxRecords: 100 });
    await store.close();
    await expect(audit.record({ ...entry, method: 'StopAgent', code: 7 })).resolves.toBeUndefined();
    expect(logs.records().find((r) => r.msg === 'audit record lost')).toMatchObject({ method: 'StopAgent', tokenId: 'bootstrap', code: 7 });
    store = SqliteStore.open(join(dir, 'tether.db'));
  });

  it('refuses bounds outside the documented ranges', () => {
    expect(() => new AuditLog({ store, clock, logger: logs.logger, maxAgeMs: 1_000, maxRecords: 100 })).toThrow(/audit max age/);
    expect(() => new AuditLog({ store, clock, logger: logs.logger, maxAgeMs: HOUR_MS, maxRecords: 10 })).toThrow(/audit max records/);
  });
});
