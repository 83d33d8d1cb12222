import { createServer, request as httpRequest } from 'node:http';
import { listen } from '../../common/metrics-http.js';

/**
 * A reverse proxy on 127.0.0.1:0 in front of the control plane's HTTP port,
 * as an HTTPS front would be in production: it exists (and has its URL, the
 * issuer URL) before the control plane starts; {@link HttpFront.pointAt} then
 * names the port it forwards to. Counts the requests per path.
 */
export interface HttpFront {
  /** `http://127.0.0.1:<port>`, plus `path` if given. */
  url: string;
  pointAt(port: number): void;
  /** Requests forwarded, per path. */
  requests: Map<string, number>;
  close(): Promise<void>;
}

export async function startHttpFront(path = ''): Promise<HttpFront> {
  let targetPort = 0;
  const requests = new Map<string, number>();
  const server = createServer((request, response) => {
    const url = request.url ?? '/';
    requests.set(url, (requests.get(url) ?? 0) + 1);
    if (targetPort === 0) {
      response.writeHead(503).end();
      return;
    }
    const upstream = httpRequest({ host: '127.0.0.1', port: targetPort, method: request.method, path: url, headers: request.headers }, (answer) => {
      response.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(response);
    });
    upstream.on('error', () => response.writeHead(502).end());
    request.pipe(upstream);
  });
  const port = await listen(server, '127.0.0.1:0');
  return {
    url: `http://127.0.0.1:${port}${path}`,
    pointAt: (p) => {
      targetPort = p;
    },
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
