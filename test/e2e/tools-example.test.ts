/**
 * examples/tool-agent.ts, run as a module agent on a real host: its tools call
 * a third-party gRPC service (grpc.health.v1, plaintext loopback, then TLS)
 * and an HTTP service as the agent, with audience tokens those services verify
 * against the control plane's JWKS.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { agent, parseToolAgentConfig, type ToolAgentConfig } from '../../examples/tool-agent.js';
import { startGrpcAudienceService, startHttpAudienceService } from '../support/audience-services.js';
import { call, Harness } from '../support/harness.js';
import { selfSignedCert } from '../support/tls-cert.js';
import { nextEvent, waitUntil } from '../support/wait.js';

describe('examples/tool-agent.ts', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  /** Starts a host offering the example as `tool-agent` and dispatches `agentId` with `config`. */
  async function runExample(h: Harness, agentId: string, config: ToolAgentConfig): Promise<void> {
    const { host, hostId } = await h.startHost('example-host', { modules: new Map([['tool-agent', agent]]) });
    const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === agentId);
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId,
      name: agentId,
      hostId,
      hostLabels: [],
      spec: { kind: 'module', module: 'tool-agent', command: '', args: [], config: JSON.stringify(config) },
    });
    await started;
  }

  /** Log records of the example's successful tool calls. */
  function answered(h: Harness, msg: string): Record<string, unknown>[] {
    return h.logs.records().filter((r) => r.msg === msg);
  }

  it('calls a gRPC and an HTTP service as its agent, each with a token for that service', async () => {
    harness = await Harness.start({ httpAddress: '127.0.0.1:0' });
    const h = harness;
    const jwksUrl = `http://127.0.0.1:${h.cp.httpPort}/.well-known/jwks.json`;
    const inventory = await startGrpcAudienceService({ jwksUrl, audience: 'inventory', clock: h.clock });
    onTestFinished(() => inventory.close());
    const billing = await startHttpAudienceService({ jwksUrl, audience: 'billing', clock: h.clock });
    onTestFinished(() => billing.close());

    await runExample(h, 'example-1', { grpc: { target: inventory.target, audience: 'inventory' }, http: { url: billing.url, audience: 'billing' } });
    await waitUntil(() => answered(h, 'HTTP tool call answered').length > 0, 'the example to finish its tool calls');

    expect(inventory.accepted.map((p) => [p.sub, p.aud])).toEqual([['example-1', 'inventory']]);
    expect(billing.accepted.map((p) => [p.sub, p.aud])).toEqual([['example-1', 'billing']]);
    expect(inventory.refused + billing.refused).toBe(0);
    expect(answered(h, 'gRPC tool call answered')[0]).toMatchObject({ aud: 'inventory', status: 'SERVING', jti: inventory.accepted[0]?.jti });
    expect(answered(h, 'HTTP tool call answered')[0]).toMatchObject({ aud: 'billing', status: 200, jti: billing.accepted[0]?.jti });
  });

  it('calls a TLS gRPC service given its CA file', async () => {
    harness = await Harness.start({ httpAddress: '127.0.0.1:0' });
    const h = harness;
    const cert = selfSignedCert();
    const dir = mkdtempSync(join(tmpdir(), 'tether-example-ca-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const caFile = join(dir, 'ca.pem');
    writeFileSync(caFile, cert.certPem);
    const inventory = await startGrpcAudienceService({
      jwksUrl: `http://127.0.0.1:${h.cp.httpPort}/.well-known/jwks.json`,
      audience: 'inventory',
      clock: h.clock,
      credentials: grpc.ServerCredentials.createSsl(null, [{ cert_chain: cert.certPem, private_key: cert.keyPem }], false),
    });
    onTestFinished(() => inventory.close());

    await runExample(h, 'example-tls', { grpc: { target: inventory.target, audience: 'inventory', caFile } });
    await waitUntil(() => answered(h, 'gRPC tool call answered').length > 0, 'the example to call the TLS service');
    expect(inventory.accepted.map((p) => [p.sub, p.aud])).toEqual([['example-tls', 'inventory']]);
  });

  it('parses its configuration, refusing an incomplete one', () => {
    expect(parseToolAgentConfig('')).toEqual({});
    expect(parseToolAgentConfig('{"http":{"url":"https://api.example/x","audience":"api"}}')).toEqual({ http: { url: 'https://api.example/x', audience: 'api' } });
    expect(() => parseToolAgentConfig('{"grpc":{"target":"127.0.0.1:1"}}')).toThrow(/audience/);
  });
});
