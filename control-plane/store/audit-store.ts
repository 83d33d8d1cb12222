/**
 * The audit log of AdminService: who (the admin token id) called what (the
 * method and the ids it named), when, and how it ended. Never a secret or a
 * message payload: only ids and a status code are kept.
 */

/** One id a call named: `agent`, `host`, `key`, `token`, `seq`, `purpose`, `name`. */
export interface AuditTarget {
  kind: string;
  id: string;
}

/** One AdminService call, as the audit log keeps it. */
export interface AuditRecord {
  /** Increasing, never reused (pruning leaves gaps). */
  id: number;
  atMs: number;
  /** The admin token that called (`bootstrap` for the bootstrap token). */
  tokenId: string;
  /** The RPC, as the proto names it (`DispatchAgent`). */
  method: string;
  targets: AuditTarget[];
  /** The gRPC status code it ended with (0: OK). */
  code: number;
}

/** What {@link AuditStore.listAudit} returns: records after an id, optionally of one token, from a time. */
export interface AuditQuery {
  afterId: number;
  limit: number;
  tokenId?: string;
  sinceMs?: number;
}

/** The store of audit records. Each method is one transaction. */
export interface AuditStore {
  /** Appends one record; returns its id. */
  appendAudit(record: Omit<AuditRecord, 'id'>): Promise<number>;
  /** Records matching `query`, oldest (lowest id) first. */
  listAudit(query: AuditQuery): Promise<AuditRecord[]>;
  /** Deletes records older than `beforeMs`, then the oldest beyond the newest `maxRecords`; returns how many went. */
  pruneAudit(beforeMs: number, maxRecords: number): Promise<number>;
}
