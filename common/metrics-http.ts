import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from './logger.js';
import { splitHostPort } from './loopback.js';

/** Answers `GET /metrics` from `registry` (Prometheus text); returns false, answering nothing, for any other request. */
export function answerMetrics(registry: Registry, logger: Logger, request: IncomingMessage, response: ServerResponse): boolean {
  if (request.method !== 'GET' || request.url !== '/metrics') return false;
  registry.metrics().then(
    (text) => {
      response.writeHead(200, { 'content-type': registry.contentType });
      response.end(text);
    },
    (err: unknown) => {
      logger.error({ err }, 'metrics failed');
      response.writeHead(500, { 'content-type': 'text/plain' });
      response.end('metrics failed\n');
    },
  );
  return true;
}

/** Starts `server` listening on `address` (`host:port`, port 0 for any); resolves with the bound port. */
export function listen(server: Server, address: string): Promise<number> {
  const at = splitHostPort(address);
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host.replace(/^\[|\]$/g, ''), () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

/** An HTTP server answering only `GET /metrics` (404 otherwise), listening on `address`. */
export async function serveMetrics(registry: Registry, address: string, logger: Logger): Promise<{ port: number; close: () => Promise<void> }> {
  const server = createServer((request, response) => {
    if (answerMetrics(registry, logger, request, response)) return;
    response.writeHead(404, { 'content-type': 'text/plain' });
    response.end('not found\n');
  });
  const port = await listen(server, address);
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
