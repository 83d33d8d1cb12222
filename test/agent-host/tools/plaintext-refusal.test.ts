/**
 * A token is never sent in plaintext to a non-loopback target: every entry
 * point of the tool library that could do so refuses before a channel, a
 * connection or even a read of the token. No test here connects anywhere but
 * 127.0.0.1; the non-loopback targets are documentation addresses
 * (203.0.113.0/24, 2001:db8::/32) and the reserved `.invalid` name, and none is
 * ever dialled or resolved.
 */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it, onTestFinished, vi } from 'vitest';
import { AgentClient } from '../../../agent-host/tools/agent-client.js';
import { AudienceTokens } from '../../../agent-host/tools/audience-tokens.js';
import { bearerChannel } from '../../../agent-host/tools/bearer-channel.js';
import type { CredentialSource } from '../../../agent-host/tools/credential-source.js';
import { fetchAs } from '../../../agent-host/tools/fetch-as.js';
import { assertChannelAllowed, assertHttpAllowed } from '../../../agent-host/tools/loopback.js';
import { InvalidArgumentError } from '../../../common/errors.js';
import { FakeClock } from '../../support/fake-clock.js';

const NON_LOOPBACK_TARGETS = [
  '203.0.113.5:443',
  'example.invalid:443',
  'dns:///example.invalid:443',
  'ipv4:203.0.113.5:443',
  'ipv6:[2001:db8::1]:443',
  '[2001:db8::1]:443',
  '127.0.0.1.example.invalid:443',
];

const NON_LOOPBACK_URLS = [
  'http://203.0.113.5/api',
  'http://example.invalid:8080/api',
  'http://[2001:db8::1]/api',
  'http://127.0.0.1.example.invalid/api',
  'ftp://127.0.0.1/file',
  'not a url',
];

/** A source that counts its reads: a refusal must come before the token is even read. */
function countingSource(): CredentialSource & { gets: number } {
  const source = {
    gets: 0,
    get(): string {
      source.gets++;
      return 'a-token-that-must-not-travel';
    },
  };
  return source;
}

/** Runs `fn`, returning what it threw. */
function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

describe('plaintext refusal', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it.each(NON_LOOPBACK_TARGETS)('AgentClient, AudienceTokens and bearerChannel refuse plaintext to %s', (target) => {
    const source = countingSource();
    const clock = new FakeClock();
    const refusals = [
      thrownBy(() => new AgentClient({ target, source })),
      thrownBy(() => new AgentClient({ target, source, channelCredentials: grpc.credentials.createInsecure() })),
      thrownBy(() => new AudienceTokens({ target, source, clock })),
      thrownBy(() => new AudienceTokens({ target, source, clock, channelCredentials: grpc.credentials.createInsecure() })),
      thrownBy(() => bearerChannel(target, source)),
      thrownBy(() => bearerChannel(target, source, { channelCredentials: grpc.credentials.createInsecure() })),
    ];
    for (const refusal of refusals) {
      expect(refusal).toBeInstanceOf(InvalidArgumentError);
      expect((refusal as Error).message).not.toContain('a-token');
    }
    expect(source.gets).toBe(0);
  });

  it.each(NON_LOOPBACK_URLS)('fetchAs refuses %s before reading the token or fetching', async (url) => {
    const fetchSpy = vi.spyOn(globalThis, 'fetch');
    const source = countingSource();
    await expect(fetchAs(source, url)).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(source.gets).toBe(0);
    expect(fetchSpy).not.toHaveBeenCalled();
  });

  it('allows loopback plaintext and TLS anywhere (checked without dialling)', () => {
    for (const target of ['127.0.0.1:1', 'localhost:1', '[::1]:1', 'ipv4:127.0.0.1:1', 'dns:///localhost:1']) {
      expect(() => assertChannelAllowed(target, undefined)).not.toThrow();
    }
    expect(() => assertChannelAllowed('203.0.113.5:443', grpc.credentials.createSsl())).not.toThrow();
    for (const url of ['http://127.0.0.1:1/x', 'http://localhost:1/x', 'http://[::1]:1/x', 'https://example.invalid/x']) {
      expect(assertHttpAllowed(url)).toBeInstanceOf(URL);
    }
    // Constructing a loopback client opens nothing until a call is made.
    const client = new AgentClient({ target: '127.0.0.1:1', source: countingSource() });
    client.close();
  });

  it('fetchAs sends the bearer token to a loopback HTTP service, read at the call', async () => {
    const seen: IncomingHttpHeaders[] = [];
    const server = createServer((request, response) => {
      seen.push(request.headers);
      response.writeHead(204);
      response.end();
    });
    const port = await new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
    onTestFinished(async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });
    let token = 'first-token';
    const source = { get: (): string => token };
    expect((await fetchAs(source, `http://127.0.0.1:${port}/a`)).status).toBe(204);
    token = 'second-token';
    expect((await fetchAs(source, `http://127.0.0.1:${port}/b`, { headers: { 'x-extra': 'kept' } })).status).toBe(204);
    expect(seen.map((headers) => headers.authorization)).toEqual(['Bearer first-token', 'Bearer second-token']);
    expect(seen[1]?.['x-extra']).toBe('kept');
  });

  it('fetchAs does not follow a redirect with the token unless asked to', async () => {
    const paths: string[] = [];
    const server = createServer((request, response) => {
      paths.push(request.url ?? '');
      response.writeHead(302, { location: '/elsewhere' });
      response.end();
    });
    const port = await new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
    onTestFinished(async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });
    await expect(fetchAs({ get: () => 'token' }, `http://127.0.0.1:${port}/start`)).rejects.toMatchObject({ code: 'unavailable' });
    expect(paths).toEqual(['/start']);
  });
});
