import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/**
 * A loopback TCP forwarder with a stable address and a target that can change:
 * a host pointed at it keeps one address while the control plane behind it is
 * restarted on a new ephemeral port. Each accepted connection is piped to the
 * target current at accept time; if that fails, the accepted socket is closed
 * (the client sees a refused connection and retries). `cut()` drops every open
 * connection at once, like a network failure.
 */
export class TcpProxy {
  readonly port: number;
  #targetPort: number;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #closing: Promise<void> | undefined;

  private constructor(server: Server, port: number, targetPort: number) {
    this.#server = server;
    this.port = port;
    this.#targetPort = targetPort;
    server.on('connection', (client) => this.#forward(client));
  }

  /** Listens on 127.0.0.1:0 and forwards to 127.0.0.1:`targetPort`. */
  static async start(targetPort: number): Promise<TcpProxy> {
    const server = createServer();
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve((server.address() as AddressInfo).port);
      });
    });
    return new TcpProxy(server, port, targetPort);
  }

  /** `127.0.0.1:<port>` of the proxy. */
  get target(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Connections accepted from now on go to 127.0.0.1:`targetPort`. */
  retarget(targetPort: number): void {
    this.#targetPort = targetPort;
  }

  /** Drops every open connection (both sides). */
  cut(): void {
    for (const socket of this.#sockets) socket.destroy();
    this.#sockets.clear();
  }

  /** Stops listening and drops every connection. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.cut();
    });
    return this.#closing;
  }

  #forward(client: Socket): void {
    const upstream = createConnection({ host: '127.0.0.1', port: this.#targetPort });
    this.#sockets.add(client);
    this.#sockets.add(upstream);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      this.#sockets.delete(client);
      this.#sockets.delete(upstream);
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  }
}
