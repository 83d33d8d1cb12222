import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, UnauthenticatedError } from '../../common/errors.js';
import type { AdminRoleName, AdminTokenRecord, AdminTokenStore } from '../store/admin-token-store.js';

/** The id of the bootstrap token (`TETHER_ADMIN_TOKEN(_FILE)`, or `<data-dir>/admin-token`): an admin, retired only by changing it and restarting. */
export const BOOTSTRAP_TOKEN_ID = 'bootstrap';

/** What every added admin token starts with: `tadm_<id>.<secret>`. */
export const ADMIN_TOKEN_PREFIX = 'tadm_';

/** `tadm_` + 16 hex digits (the id) + `.` + 43 base64url characters (32 random bytes). */
const ADMIN_TOKEN_FORMAT = /^tadm_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;

/** Longest token name kept. */
const MAX_NAME_CHARS = 128;

/** Who is calling AdminService: the id of the token presented and its role. */
export interface AdminCaller {
  tokenId: string;
  role: AdminRoleName;
}

/** An admin token's id and secret, when `token` has the form of an added one. */
export function parseAdminToken(token: string): { tokenId: string; secret: string } | undefined {
  const match = ADMIN_TOKEN_FORMAT.exec(token);
  return match === null ? undefined : { tokenId: match[1] ?? '', secret: match[2] ?? '' };
}

/** SHA-256 of a secret, hex: what the store keeps of an admin token. */
export function adminSecretHash(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** An admin token refused, with a fixed word for why (for the auth-failure metric; never the token). */
export class AdminTokenRefusedError extends UnauthenticatedError {
  readonly reason: 'wrong-admin-token' | 'retired-admin-token';

  constructor(reason: 'wrong-admin-token' | 'retired-admin-token', message: string) {
    super(message);
    this.reason = reason;
  }
}

/** Options of {@link AdminTokens}. */
export interface AdminTokensOptions {
  store: AdminTokenStore;
  /** The bootstrap admin's secret; compared in constant time, never stored or logged. */
  bootstrapToken: string;
  clock: Clock;
}

/**
 * The admin tokens: the bootstrap one, and those added and retired through
 * AdminService. Every check reads the store (a lookup by primary key), so a
 * token retired by this control plane or another one on the same database is
 * refused from the next call on: nothing here outlives a retirement.
 */
export class AdminTokens {
  readonly #store: AdminTokenStore;
  readonly #bootstrapDigest: Buffer;
  readonly #clock: Clock;

  constructor(options: AdminTokensOptions) {
    this.#store = options.store;
    this.#bootstrapDigest = createHash('sha256').update(options.bootstrapToken, 'utf8').digest();
    this.#clock = options.clock;
  }

  /** Whether `token` is the bootstrap token (constant time). */
  isBootstrap(token: string): boolean {
    return timingSafeEqual(createHash('sha256').update(token, 'utf8').digest(), this.#bootstrapDigest);
  }

  /** Who `token` is, or an {@link AdminTokenRefusedError}: unknown, wrong secret, or retired. */
  async authenticate(token: string): Promise<AdminCaller> {
    if (this.isBootstrap(token)) return { tokenId: BOOTSTRAP_TOKEN_ID, role: 'admin' };
    const parsed = parseAdminToken(token);
    if (parsed === undefined) throw new AdminTokenRefusedError('wrong-admin-token', 'not an admin token');
    const record = await this.#store.getAdminToken(parsed.tokenId);
    // Compared whether or not the id exists, so the time taken says nothing of the secret.
    const expected = Buffer.from(record?.secretHash ?? adminSecretHash(''), 'hex');
    const isMatch = timingSafeEqual(Buffer.from(adminSecretHash(parsed.secret), 'hex'), expected);
    if (record === undefined || !isMatch) throw new AdminTokenRefusedError('wrong-admin-token', 'not an admin token');
    if (record.retiredAtMs !== null) throw new AdminTokenRefusedError('retired-admin-token', `admin token ${record.tokenId} is retired`);
    return { tokenId: record.tokenId, role: record.role };
  }

  /** Adds a token; returns its record and the token itself, `tadm_<id>.<secret>`, which exists nowhere else. */
  async add(name: string, role: AdminRoleName, createdBy: string): Promise<{ record: AdminTokenRecord; token: string }> {
    if (name.length > MAX_NAME_CHARS || /[\p{Cc}]/u.test(name)) throw new InvalidArgumentError(`a token name is at most ${MAX_NAME_CHARS} printable characters`);
    const tokenId = randomBytes(8).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const record: AdminTokenRecord = { tokenId, name, role, secretHash: adminSecretHash(secret), createdAtMs: this.#clock.now(), createdBy, retiredAtMs: null };
    await this.#store.insertAdminToken(record);
    return { record, token: `${ADMIN_TOKEN_PREFIX}${tokenId}.${secret}` };
  }

  /** At most `limit` tokens after `afterId`: the bootstrap token first (a record with no hash), then the added ones in id order. */
  async list(afterId: string | null, limit: number): Promise<AdminTokenRecord[]> {
    if (afterId !== null && afterId !== BOOTSTRAP_TOKEN_ID) return this.#store.listAdminTokens(afterId, limit);
    const stored = await this.#store.listAdminTokens(null, afterId === null ? Math.max(limit - 1, 0) : limit);
    if (afterId !== null) return stored;
    const bootstrap: AdminTokenRecord = {
      tokenId: BOOTSTRAP_TOKEN_ID,
      name: 'the bootstrap token (TETHER_ADMIN_TOKEN, --admin-token-file or <data-dir>/admin-token)',
      role: 'admin',
      secretHash: '',
      createdAtMs: 0,
      createdBy: '',
      retiredAtMs: null,
    };
    return [bootstrap, ...stored];
  }

  /** Retires a token at once (every later call with it is refused); idempotent. */
  async retire(tokenId: string): Promise<AdminTokenRecord> {
    if (tokenId === BOOTSTRAP_TOKEN_ID) {
      throw new FailedPreconditionError('the bootstrap token cannot be retired through the API: change TETHER_ADMIN_TOKEN (or its file) and restart the control plane');
    }
    if (tokenId === '') throw new InvalidArgumentError('token_id is required');
    const record = await this.#store.retireAdminToken(tokenId, this.#clock.now());
    if (record === undefined) throw new NotFoundError(`no admin token ${tokenId}`);
    return record;
  }
}
