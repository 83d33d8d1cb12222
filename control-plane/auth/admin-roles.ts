/**
 * Which role may call each AdminService method: the one table the admin guard
 * enforces and docs/security.md prints. A `viewer` lists and describes (never a
 * message payload: ListMessages returns sizes, not payloads) and changes
 * nothing; an `admin` may call everything. The admin tokens and the audit log
 * are read by admins only: they say who holds access and what they did with it.
 *
 * The table is typed by the generated service, so a new RPC without a row does
 * not compile (and test/control-plane/auth/admin-roles.test.ts checks the
 * service definition against it at run time too).
 */
import { PermissionDeniedError } from '../../common/errors.js';
import type { AdminServiceService } from '../../gen/tether/v1/admin.js';
import type { AdminRoleName } from '../store/admin-token-store.js';

/** A method of AdminService, as the generated service definition names it (`enrollHost`). */
export type AdminMethod = keyof typeof AdminServiceService;

/** The least role each AdminService method needs. */
export const ADMIN_METHOD_ROLES: Readonly<Record<AdminMethod, AdminRoleName>> = {
  enrollHost: 'admin',
  listHosts: 'viewer',
  revokeHost: 'admin',
  drainHost: 'admin',
  uncordonHost: 'admin',
  dispatchAgent: 'admin',
  ensureAgent: 'admin',
  stopAgent: 'admin',
  rotateAgentCredential: 'admin',
  listAgents: 'viewer',
  getAgent: 'viewer',
  describeAgent: 'viewer',
  getJwks: 'viewer',
  rotateSigningKey: 'admin',
  listSigningKeys: 'viewer',
  revokeSigningKey: 'admin',
  sendMessages: 'admin',
  listMessages: 'viewer',
  requeueMessage: 'admin',
  purgeMessage: 'admin',
  listAdminTokens: 'admin',
  addAdminToken: 'admin',
  retireAdminToken: 'admin',
  listAuditRecords: 'admin',
  watchEvents: 'viewer',
};

/** Every role, least first: each may do what those before it may. */
export const ADMIN_ROLES: readonly AdminRoleName[] = ['viewer', 'admin'];

/** Whether `role` is at least `needed`. */
export function hasRole(role: AdminRoleName, needed: AdminRoleName): boolean {
  return ADMIN_ROLES.indexOf(role) >= ADMIN_ROLES.indexOf(needed);
}

/** `role` as a valid role name, or undefined. */
export function parseAdminRole(role: string): AdminRoleName | undefined {
  return (ADMIN_ROLES as readonly string[]).includes(role) ? (role as AdminRoleName) : undefined;
}

/**
 * Throws PermissionDeniedError unless `role` may call `method`; the message
 * names the method, the role it needs and the token's id and role (no secret).
 */
export function authorizeAdminCall(method: AdminMethod, rpcName: string, caller: { tokenId: string; role: AdminRoleName }): void {
  const needed = ADMIN_METHOD_ROLES[method] as AdminRoleName | undefined;
  if (needed === undefined) throw new PermissionDeniedError(`${rpcName} has no role in the table: nobody may call it`);
  if (!hasRole(caller.role, needed)) {
    throw new PermissionDeniedError(`${rpcName} needs the ${needed} role; admin token ${caller.tokenId} has the ${caller.role} role`);
  }
}
