import { afterEach, describe, expect, it } from 'vitest';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { assertNoSecrets, JWT_SHAPE } from '../support/secrets.js';
import { nextEvent, waitUntil } from '../support/wait.js';

describe('logs', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('carry credential events (jti, kid, gen) and never a secret, at debug level', async () => {
    harness = await Harness.start({ agentTokenTtlMs: 60_000 });
    const secrets = new Set<string>([harness.adminToken]);
    const credentialStore = new MemoryHostCredentialStore();
    const views = new Map<string, ReadOnlyCredentials>();
    const grab = (context: { agentId: string; credentials: ReadOnlyCredentials }): object => {
      views.set(context.agentId, context.credentials);
      secrets.add(context.credentials.get());
      return {};
    };
    const { host, hostId, joinToken } = await harness.startHost('logged', { credentialStore, modules: new Map([['grab', grab]]) });
    secrets.add(joinToken);
    host.events.on('rotation-applied', ({ agentId }) => secrets.add(views.get(agentId)?.get() ?? ''));
    await waitUntil(async () => (await credentialStore.load()) !== undefined, 'the host credential');
    secrets.add((await credentialStore.load())?.token ?? '');

    await harness.dispatch(host, hostId, 'a1', 'grab');
    await harness.dispatch(host, hostId, 'a2', 'grab');
    const rotated = nextEvent(host.events, 'rotation-applied', (e: { agentId: string }) => e.agentId === 'a1');
    await call(harness.admin.rotateAgentCredential.bind(harness.admin), { agentId: 'a1' });
    await rotated;
    const beats = nextEvent(host.events, 'heartbeat', (e: { agentId: string }) => e.agentId === 'a2');
    harness.clock.advance(3_000);
    await beats;
    // Failures get logged too: a wrong admin token and a forged agent token.
    const client = harness.agentClient();
    const tampered = `${views.get('a2')?.get() ?? ''}x`;
    expect(await statusOf(call(client.whoAmI.bind(client), {}, bearer(tampered)))).not.toBe('ok');
    secrets.add(tampered);
    await call(harness.admin.stopAgent.bind(harness.admin), { agentId: 'a1', reason: 'done' });

    const text = harness.logs.text();
    const records = harness.logs.records();
    expect(records.some((r) => r.level === 20)).toBe(true);
    const credentialLines = records.filter((r) => typeof r.jti === 'string' && typeof r.kid === 'string' && typeof r.gen === 'number');
    expect(credentialLines.length).toBeGreaterThanOrEqual(4);
    expect(secrets.size).toBeGreaterThanOrEqual(5);
    assertNoSecrets(text, secrets, 'the captured logs');
    expect(JWT_SHAPE.test(text)).toBe(false);
  });
});
