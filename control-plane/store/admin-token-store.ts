/**
 * The admin tokens an operator adds and retires (`control-plane tokens`): each
 * with an id, a role and only a hash of its secret. The bootstrap token (from
 * `TETHER_ADMIN_TOKEN(_FILE)` or `<data-dir>/admin-token`) is not stored here.
 */

/** What an admin token may do: `viewer` lists and describes; `admin` does everything. */
export type AdminRoleName = 'admin' | 'viewer';

/** One admin token as the store keeps it: never its secret, only its SHA-256. */
export interface AdminTokenRecord {
  /** The id the token names (`tadm_<id>.<secret>`); not secret. */
  tokenId: string;
  /** A label for people (whose token, what for). */
  name: string;
  role: AdminRoleName;
  /** SHA-256 of the secret part, hex. */
  secretHash: string;
  createdAtMs: number;
  /** The token id of the admin who added it. */
  createdBy: string;
  /** When it was retired; null while it is valid. */
  retiredAtMs: number | null;
}

/** The store of admin tokens. Each method is one transaction. */
export interface AdminTokenStore {
  /** Throws AlreadyExistsError when the id is taken (by a valid or a retired token). */
  insertAdminToken(token: AdminTokenRecord): Promise<void>;
  getAdminToken(tokenId: string): Promise<AdminTokenRecord | undefined>;
  /** Tokens after `afterId` in id order, at most `limit`; retired ones included. */
  listAdminTokens(afterId: string | null, limit: number): Promise<AdminTokenRecord[]>;
  /**
   * Retires a token at `nowMs` (kept, so its id is never reused and the audit
   * log still names it); a token already retired keeps its first time. Returns
   * the token as it is now, or undefined if there is none with that id.
   */
  retireAdminToken(tokenId: string, nowMs: number): Promise<AdminTokenRecord | undefined>;
}
