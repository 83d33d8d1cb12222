import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { assertNoSecrets } from '../support/secrets.js';
import { nextEvent } from '../support/wait.js';

describe('metrics', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('serves Prometheus text with hosts, agents, credentials and refusals, and no secret in any label', async () => {
    harness = await Harness.start({ httpAddress: '127.0.0.1:0' });
    const { host, hostId, joinToken } = await harness.startHost('metered');
    await harness.dispatch(host, hostId, 'm1');
    const beat = nextEvent(host.events, 'heartbeat');
    harness.clock.advance(3_000);
    await beat;
    const stranger = new AdminServiceClient(harness.target, grpc.credentials.createInsecure());
    expect(await statusOf(call(stranger.listAgents.bind(stranger), { pageSize: 0, pageToken: '', hostId: '' }, bearer('not-the-admin-token')))).toBe(
      grpc.status.UNAUTHENTICATED,
    );
    stranger.close();

    const response = await fetch(`http://127.0.0.1:${harness.cp.httpPort}/metrics`);
    expect(response.status).toBe(200);
    const text = await response.text();
    expect(text).toMatch(/^tether_hosts_connected 1$/m);
    expect(text).toMatch(/^tether_agents\{state="running"\} 1$/m);
    expect(text).toMatch(/^tether_credentials_issued_total\{kind="agent"\} 1$/m);
    expect(text).toMatch(/^tether_heartbeats_total 1$/m);
    expect(text).toMatch(/^tether_auth_failures_total\{principal="admin",reason="wrong-admin-token"\} 1$/m);
    assertNoSecrets(text, [harness.adminToken, joinToken, 'not-the-admin-token'], 'the metrics');
  });
});
