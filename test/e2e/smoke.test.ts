import { afterEach, describe, expect, it } from 'vitest';
import { call, Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

describe('smoke', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('enrolls a host, dispatches an agent, heartbeats and rotates', async () => {
    harness = await Harness.start({ agentTokenTtlMs: 60_000 });
    const { host, hostId } = await harness.startHost('alpha');
    await harness.dispatch(host, hostId, 'a1');
    const agents = await call(harness.admin.listAgents.bind(harness.admin), { pageSize: 0, pageToken: '', hostId: '' });
    expect(agents.agents.map((a) => a.agentId)).toEqual(['a1']);
    const beat = nextEvent<{ isOk: boolean }>(host.events, 'heartbeat');
    harness.clock.advance(3_000);
    expect((await beat).isOk).toBe(true);
    const rotated = nextEvent<{ generation: number }>(host.events, 'rotation-applied');
    harness.clock.advance(40_000);
    expect((await rotated).generation).toBe(2);
    await waitUntil(() => host.agentCredential('a1')?.generation === 2, 'generation 2');
  });
});
