/**
 * The fault proxy the host tests (and the chaos soak) stand on: real sockets on
 * 127.0.0.1, echo servers behind it.
 */
import { randomBytes } from 'node:crypto';
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { FaultProxy } from './fault-proxy.js';
import { nextEvent, waitUntil } from './wait.js';

/** An echo server on 127.0.0.1:0 that prefixes nothing and counts its connections. */
interface EchoServer {
  port: number;
  connections: Set<Socket>;
  close(): Promise<void>;
}

async function startEcho(): Promise<EchoServer> {
  const connections = new Set<Socket>();
  const server: Server = createServer((socket) => {
    connections.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => connections.delete(socket));
    socket.pipe(socket);
  });
  const port = await new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
  return {
    port,
    connections,
    close: async () => {
      for (const socket of connections) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A client socket to `port` that collects what it receives. */
interface Client {
  socket: Socket;
  received: () => Buffer;
  closed: Promise<void>;
}

function connect(port: number): Client {
  const socket = createConnection({ host: '127.0.0.1', port });
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return { socket, received: () => Buffer.concat(chunks), closed };
}

describe('FaultProxy', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function setUp(options: { maxBufferedBytes?: number } = {}): Promise<{ echo: EchoServer; proxy: FaultProxy; client: () => Client }> {
    const echo = await startEcho();
    cleanups.push(() => echo.close());
    const proxy = await FaultProxy.start({ targetPort: echo.port, ...options });
    cleanups.push(() => proxy.close());
    const client = (): Client => {
      const made = connect(proxy.port);
      cleanups.push(() => void made.socket.destroy());
      return made;
    };
    return { echo, proxy, client };
  }

  it('forwards both ways, and sends new connections to a new target while open ones stay', async () => {
    const { echo, proxy, client } = await setUp();
    expect(proxy.target).toBe(`127.0.0.1:${proxy.port}`);
    const first = client();
    first.socket.write('one');
    await waitUntil(() => first.received().toString() === 'one', 'the echo through the proxy');
    expect(proxy.openConnections).toBe(1);

    const other = await startEcho();
    cleanups.push(() => other.close());
    proxy.setTarget(other.port);
    const second = client();
    second.socket.write('two');
    await waitUntil(() => second.received().toString() === 'two', 'the echo from the new target');
    expect(other.connections.size).toBe(1);
    expect(echo.connections.size).toBe(1);
    first.socket.write('+');
    await waitUntil(() => first.received().toString() === 'one+', 'the old connection still on the old target');
    expect(proxy.acceptedConnections).toBe(2);
  });

  it('keeps every byte, in order, through a delay, holding a bounded amount', async () => {
    const maxBufferedBytes = 64 * 1024;
    const { client, proxy } = await setUp({ maxBufferedBytes });
    proxy.delay(2);
    const payload = randomBytes(4 * 1024 * 1024);
    const c = client();
    c.socket.write(payload);
    await waitUntil(() => c.received().length >= payload.length, 'the whole payload echoed');
    expect(c.received().equals(payload)).toBe(true);
    // Reading stops at the bound; one read (at most 64 KiB on a TCP socket) may land on top of it.
    expect(proxy.peakBufferedBytes).toBeGreaterThan(0);
    expect(proxy.peakBufferedBytes).toBeLessThanOrEqual(maxBufferedBytes + 64 * 1024);
    expect(() => proxy.delay(-1)).toThrow(RangeError);
  });

  it('blackholes without closing: held bytes and closes pass only on heal, and a side that closed meanwhile gets the other cut', async () => {
    const { echo, proxy, client } = await setUp();
    const c = client();
    c.socket.write('a');
    await waitUntil(() => c.received().toString() === 'a', 'the first echo');
    const order: string[] = [];
    // Never rejects: it resolves on the socket's close.
    c.closed.then(
      () => order.push('client closed'),
      (err: unknown) => order.push(`client close failed: ${String(err)}`),
    );

    proxy.blackhole();
    c.socket.write('b');
    // The server drops its side; behind a dead link the client cannot know.
    const [serverSide] = [...echo.connections];
    serverSide?.destroy();
    await waitUntil(() => echo.connections.size === 0, 'the server side closed');
    expect(proxy.openConnections).toBe(1);

    order.push('healed');
    proxy.heal();
    await c.closed;
    expect(order).toEqual(['healed', 'client closed']);
    expect(c.received().toString()).toBe('a');
    await waitUntil(() => proxy.openConnections === 0, 'the link forgotten');
  });

  it('resumes a blackholed connection whose ends both stayed open, with what was held', async () => {
    const { proxy, client } = await setUp();
    const c = client();
    c.socket.write('x');
    await waitUntil(() => c.received().toString() === 'x', 'the first echo');
    proxy.blackhole();
    const marks: string[] = [];
    c.socket.on('data', () => marks.push(marks.includes('healed') ? 'data after heal' : 'data before heal'));
    c.socket.write('y');
    marks.push('healed');
    proxy.heal();
    await waitUntil(() => c.received().toString() === 'xy', 'the held byte echoed after heal');
    expect(marks).toEqual(['healed', 'data after heal']);
  });

  it('cuts every connection at once, refuses new ones until healed, and closes for good', async () => {
    const { proxy, client } = await setUp();
    const a = client();
    const b = client();
    a.socket.write('1');
    b.socket.write('2');
    await waitUntil(() => a.received().length === 1 && b.received().length === 1, 'both echoes');
    proxy.cutAll();
    await Promise.all([a.closed, b.closed]);
    expect(proxy.openConnections).toBe(0);

    proxy.refuseNew();
    const refused = client();
    await refused.closed;
    expect(refused.received().length).toBe(0);

    proxy.heal();
    const fine = client();
    fine.socket.write('3');
    await waitUntil(() => fine.received().toString() === '3', 'an echo after heal');

    await proxy.close();
    expect(proxy.state).toBe('closed');
    await fine.closed;
    const late = createConnection({ host: '127.0.0.1', port: proxy.port });
    cleanups.push(() => void late.destroy());
    const err = await nextEvent<NodeJS.ErrnoException>(late, 'error');
    expect(err.code).toBe('ECONNREFUSED');
  });
});
