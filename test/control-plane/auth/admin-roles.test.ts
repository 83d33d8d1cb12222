/**
 * The role table covers every method the AdminService definition has (a new
 * RPC without a role fails here, and the guard refuses to start without one),
 * names only methods that exist, and says what docs/security.md says.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PermissionDeniedError } from '../../../common/errors.js';
import { ADMIN_METHOD_ROLES, authorizeAdminCall, hasRole, parseAdminRole, type AdminMethod } from '../../../control-plane/auth/admin-roles.js';
import { AdminServiceService } from '../../../gen/tether/v1/admin.js';

const rpcName = (method: string): string => AdminServiceService[method as AdminMethod].path.split('/').pop() as string;

describe('ADMIN_METHOD_ROLES', () => {
  it('has a role for every method of the AdminService definition, and for nothing else', () => {
    expect(Object.keys(ADMIN_METHOD_ROLES).sort()).toEqual(Object.keys(AdminServiceService).sort());
    for (const role of Object.values(ADMIN_METHOD_ROLES)) expect(['admin', 'viewer']).toContain(role);
  });

  it('lets a viewer list and describe only: nothing that changes state, reads a payload, the tokens or the audit log', () => {
    const viewer = Object.entries(ADMIN_METHOD_ROLES).filter(([, role]) => role === 'viewer').map(([method]) => rpcName(method)).sort();
    expect(viewer).toEqual(['DescribeAgent', 'GetAgent', 'GetJwks', 'ListAgents', 'ListHosts', 'ListMessages', 'ListSigningKeys', 'WatchEvents'].sort());
    // ListMessages is a viewer's because its answer has no payload field.
    expect(Object.keys(AdminServiceService.listMessages.responseDeserialize(Buffer.alloc(0)).messages[0] ?? { agentId: '', seq: 0, id: '', from: '', contentType: '', sizeBytes: 0, createdAtMs: 0, state: '', attempts: 0, lastError: '' })).not.toContain('payload');
  });

  it('is the table docs/security.md prints, row for row', () => {
    const doc = readFileSync(new URL('../../../docs/security.md', import.meta.url), 'utf8');
    for (const [method, role] of Object.entries(ADMIN_METHOD_ROLES)) {
      expect(doc, `${rpcName(method)} in docs/security.md`).toMatch(new RegExp(`^\\| \`${rpcName(method)}\` \\| ${role} \\|`, 'm'));
    }
  });

  it('orders the roles: an admin may do what a viewer may, not the other way round', () => {
    expect([hasRole('admin', 'admin'), hasRole('admin', 'viewer'), hasRole('viewer', 'viewer'), hasRole('viewer', 'admin')]).toEqual([true, true, true, false]);
    expect([parseAdminRole('admin'), parseAdminRole('viewer'), parseAdminRole('root'), parseAdminRole('')]).toEqual(['admin', 'viewer', undefined, undefined]);
  });

  it('refuses with PERMISSION_DENIED naming the method, the role needed and the token (never a secret)', () => {
    expect(() => authorizeAdminCall('stopAgent', 'StopAgent', { tokenId: '0123abcd0123abcd', role: 'viewer' })).toThrow(
      new PermissionDeniedError('StopAgent needs the admin role; admin token 0123abcd0123abcd has the viewer role'),
    );
    expect(() => authorizeAdminCall('listAgents', 'ListAgents', { tokenId: 'x', role: 'viewer' })).not.toThrow();
    expect(() => authorizeAdminCall('noSuchMethod' as AdminMethod, 'NoSuchMethod', { tokenId: 'bootstrap', role: 'admin' })).toThrow(PermissionDeniedError);
  });
});
