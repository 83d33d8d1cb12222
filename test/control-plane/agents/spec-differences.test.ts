/**
 * What `ensure` calls a different spec, as a table: each field on its own, labels
 * as a set, a name only when one is given, and never a value (config and args may
 * hold secrets, and the answer goes into an error message).
 */
import { describe, expect, it } from 'vitest';
import { specDifferences, type DesiredAgent } from '../../../control-plane/agents/spec-differences.js';
import { agent } from '../../support/store-records.js';

const existing = agent('a1', {
  name: 'worker',
  spec: { kind: 'process', module: '', command: '/bin/agent', args: ['--fast', '--token-file=secret'], config: '{"key":"s3cr3t"}' },
  requestedHostId: 'h1',
  hostLabels: [
    { key: 'zone', value: 'a' },
    { key: 'gpu', value: 'yes' },
  ],
});

function desired(patch: Partial<Omit<DesiredAgent, 'spec'>> & { spec?: Partial<DesiredAgent['spec']> } = {}): DesiredAgent {
  return {
    name: patch.name ?? '',
    spec: { ...existing.spec, ...patch.spec },
    hostId: patch.hostId ?? 'h1',
    hostLabels: patch.hostLabels ?? existing.hostLabels,
    restartPolicy: patch.restartPolicy,
  };
}

describe('specDifferences', () => {
  const rows: { name: string; desired: DesiredAgent; differences: string[] }[] = [
    { name: 'the same spec: none', desired: desired(), differences: [] },
    { name: 'no name given: the name is not compared', desired: desired({ name: '' }), differences: [] },
    { name: 'the same name given: none', desired: desired({ name: 'worker' }), differences: [] },
    { name: 'another name given', desired: desired({ name: 'other' }), differences: ['name'] },
    { name: 'another kind and module', desired: desired({ spec: { kind: 'module', module: 'idle', command: '' } }), differences: ['spec.kind', 'spec.module', 'spec.command'] },
    { name: 'args in another order', desired: desired({ spec: { args: ['--token-file=secret', '--fast'] } }), differences: ['spec.args'] },
    { name: 'one arg fewer', desired: desired({ spec: { args: ['--fast'] } }), differences: ['spec.args'] },
    { name: 'another config', desired: desired({ spec: { config: '{"key":"other"}' } }), differences: ['spec.config'] },
    { name: 'no host named, where one was', desired: desired({ hostId: '' }), differences: ['host_id'] },
    { name: 'another host named', desired: desired({ hostId: 'h2' }), differences: ['host_id'] },
    {
      name: 'the same labels in another order: none',
      desired: desired({ hostLabels: [{ key: 'gpu', value: 'yes' }, { key: 'zone', value: 'a' }] }),
      differences: [],
    },
    { name: 'a label fewer', desired: desired({ hostLabels: [{ key: 'zone', value: 'a' }] }), differences: ['host_labels'] },
    { name: 'no restart policy given: not compared', desired: desired({ restartPolicy: undefined }), differences: [] },
    { name: 'the same restart policy given: none', desired: desired({ restartPolicy: 'never' }), differences: [] },
    { name: 'another restart policy given', desired: desired({ restartPolicy: 'always' }), differences: ['restart_policy'] },
    { name: 'a label with another value', desired: desired({ hostLabels: [{ key: 'zone', value: 'b' }, { key: 'gpu', value: 'yes' }] }), differences: ['host_labels'] },
  ];

  it.each(rows)('$name', ({ desired: wanted, differences }) => {
    const found = specDifferences(existing, wanted);
    expect(found).toEqual(differences);
    expect(found.join(' ')).not.toMatch(/s3cr3t|secret/);
  });

  it('compares an agent with no requested host against no host named', () => {
    expect(specDifferences({ ...existing, requestedHostId: null }, desired({ hostId: '' }))).toEqual([]);
  });
});
