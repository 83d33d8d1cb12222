import { describe, expect, it } from 'vitest';
import { isRescheduledWhenLost } from '../../../control-plane/agents/agent-manager.js';
import type { RestartPolicyName } from '../../../control-plane/store/store.js';

describe('isRescheduledWhenLost', () => {
  it.each<[boolean, RestartPolicyName, boolean]>([
    [false, 'never', false],
    [true, 'never', true],
    [false, 'on-failure', true],
    [false, 'always', true],
    [true, 'always', true],
  ])('ensured %s, restart policy %s: moved to another host when its host is lost → %s', (isEnsured, restartPolicy, expected) => {
    expect(isRescheduledWhenLost({ isEnsured, restartPolicy })).toBe(expected);
  });
});
