/** What the audit log keeps of a call: the ids it named, and nothing else (table test). */
import { describe, expect, it } from 'vitest';
import { auditTargets } from '../../../control-plane/audit/audit-targets.js';

describe('auditTargets', () => {
  it.each([
    ['an agent and a seq', { agentId: 'a1', seq: 4 }, undefined, [{ kind: 'agent', id: 'a1' }, { kind: 'seq', id: '4' }]],
    ['empty fields are skipped', { agentId: '', hostId: '', seq: 0, pageSize: 10 }, undefined, []],
    ['a send keeps the agent, never the payload or key', { agentId: 'a1', messages: [{ payload: Buffer.from('CANARY'), idempotencyKey: 'k', contentType: 't' }] }, { messages: [{ id: 'm', seq: 1 }] }, [{ kind: 'agent', id: 'a1' }]],
    ['an enroll keeps the name and the host it made, never the join token', { name: 'h', joinTtlMs: 0 }, { hostId: 'h-1', joinToken: 'h-1.SECRET', joinExpiresAtMs: 5 }, [{ kind: 'name', id: 'h' }, { kind: 'host', id: 'h-1' }]],
    ['a token add keeps name, role and the new id, never the secret', { name: 'ci', role: 'viewer' }, { token: { tokenId: 'abcd', name: 'ci-renamed', role: 'admin', createdBy: 'bootstrap' }, secretToken: 'tadm_abcd.SECRET' }, [{ kind: 'name', id: 'ci' }, { kind: 'role', id: 'viewer' }, { kind: 'token', id: 'abcd' }]],
    ['a dispatch keeps the agent the control plane named', { agentId: '', name: 'n', spec: { config: 'SECRET-ish' } }, { agent: { agentId: 'gen-1', name: 'other', hostId: 'h1' } }, [{ kind: 'name', id: 'n' }, { kind: 'agent', id: 'gen-1' }]],
    ['a key rotation keeps the purpose and the new signer', { purpose: 'tokens' }, { keyId: 'k2', retiredKeyId: 'k1' }, [{ kind: 'purpose', id: 'tokens' }, { kind: 'key', id: 'k2' }]],
    ['a stop keeps the agent, not the free-text reason', { agentId: 'a1', reason: 'password=hunter2' }, undefined, [{ kind: 'agent', id: 'a1' }]],
  ])('%s', (_what, request, response, expected) => {
    expect(auditTargets(request, response)).toEqual(expected);
  });

  it('cuts a long id to 200 characters', () => {
    expect(auditTargets({ agentId: 'x'.repeat(1000) })).toEqual([{ kind: 'agent', id: 'x'.repeat(200) }]);
  });
});
