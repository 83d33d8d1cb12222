import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/** The only address a fault proxy listens on or connects to. */
const LOOPBACK = '127.0.0.1';

/** Bytes one direction of one connection may hold before its sender is paused. */
const DEFAULT_MAX_BUFFERED_BYTES = 1024 * 1024;

/** Options of {@link FaultProxy.start}. */
export interface FaultProxyOptions {
  /** The port on 127.0.0.1 new connections are forwarded to (see {@link FaultProxy.setTarget}). */
  targetPort: number;
  /**
   * Bytes one direction of one connection may hold (while delayed or waiting for
   * the receiver to drain) before the proxy stops reading from the sender, so
   * the sender feels TCP backpressure instead of the proxy growing. Default 1 MiB.
   */
  maxBufferedBytes?: number;
  /**
   * The loopback address upstream connections are made from (on Linux every
   * 127.0.0.0/8 address is a distinct local source): what the target sees as
   * the client's address. Default: the system's choice (127.0.0.1).
   */
  localAddress?: string;
}

/**
 * The proxy's lifecycle:
 * - `open`: listening; faults can be switched on and off.
 * - `closed`: `close()` was called; every connection was destroyed and the listener closed.
 */
export type FaultProxyState = 'open' | 'closed';

/** The faults switched on right now; shared by every connection of one proxy. */
interface Faults {
  isBlackholed: boolean;
  isRefusingNew: boolean;
  delayMs: number;
  /** The most bytes one direction of one connection has held so far. */
  peakQueuedBytes: number;
}

/** A chunk on its way, and when it may be written. */
interface Pending {
  chunk: Buffer;
  releaseAtMs: number;
}

/**
 * One direction of one proxied connection: reads `from`, writes `to`, holding
 * at most `maxBufferedBytes` (plus one chunk) before it pauses `from`. While the
 * proxy is blackholed nothing is read or written (the bytes wait in the
 * kernel's buffers, as they would behind a dead link) and an end of stream is
 * not passed on.
 */
class Direction {
  readonly #from: Socket;
  readonly #to: Socket;
  readonly #faults: Faults;
  readonly #maxBufferedBytes: number;
  #queue: Pending[] = [];
  #queuedBytes = 0;
  #isWaitingForDrain = false;
  #isEnded = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(from: Socket, to: Socket, faults: Faults, maxBufferedBytes: number) {
    this.#from = from;
    this.#to = to;
    this.#faults = faults;
    this.#maxBufferedBytes = maxBufferedBytes;
    from.on('data', (chunk: Buffer) => {
      this.#queue.push({ chunk, releaseAtMs: performance.now() + this.#faults.delayMs });
      this.#queuedBytes += chunk.length;
      this.#faults.peakQueuedBytes = Math.max(this.#faults.peakQueuedBytes, this.#queuedBytes);
      this.pump();
    });
    from.on('end', () => {
      this.#isEnded = true;
      this.pump();
    });
    to.on('drain', () => {
      this.#isWaitingForDrain = false;
      this.pump();
    });
  }

  /** Writes whatever may be written now, then decides whether to keep reading. */
  pump(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (this.#to.destroyed) {
      this.#drop();
      return;
    }
    if (!this.#faults.isBlackholed) {
      const nowMs = performance.now();
      while (!this.#isWaitingForDrain) {
        const head = this.#queue[0];
        if (head === undefined) break;
        if (head.releaseAtMs > nowMs) {
          this.#timer = setTimeout(() => this.pump(), Math.ceil(head.releaseAtMs - nowMs));
          break;
        }
        this.#queue.shift();
        this.#queuedBytes -= head.chunk.length;
        if (!this.#to.write(head.chunk)) this.#isWaitingForDrain = true;
      }
      if (this.#isEnded && this.#queue.length === 0 && !this.#to.writableEnded) this.#to.end();
    }
    const isReading = !this.#faults.isBlackholed && !this.#isWaitingForDrain && this.#queuedBytes < this.#maxBufferedBytes;
    if (this.#from.destroyed) return;
    if (isReading && this.#from.isPaused()) this.#from.resume();
    else if (!isReading && !this.#from.isPaused()) this.#from.pause();
  }

  /** Forgets what is queued (the connection is gone). */
  #drop(): void {
    this.#queue = [];
    this.#queuedBytes = 0;
  }

  /** Stops the delay timer, if any. */
  stop(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#drop();
  }
}

/**
 * A client connection and the one the proxy opened for it to the target. When
 * one side closes, the other is closed too, unless the proxy is blackholed: a
 * dead link carries no FIN or RST either, so the other side must find out by
 * itself (keepalive), and is cut only by {@link FaultProxy.heal}, `cutAll` or `close`.
 */
class Link {
  readonly #client: Socket;
  readonly #upstream: Socket;
  readonly #directions: Direction[];
  readonly #faults: Faults;
  readonly #onGone: (link: Link) => void;
  #isGone = false;

  constructor(client: Socket, upstream: Socket, faults: Faults, maxBufferedBytes: number, onGone: (link: Link) => void) {
    this.#client = client;
    this.#upstream = upstream;
    this.#faults = faults;
    this.#onGone = onGone;
    this.#directions = [new Direction(client, upstream, faults, maxBufferedBytes), new Direction(upstream, client, faults, maxBufferedBytes)];
    for (const socket of [client, upstream]) {
      // Errors end in 'close', which is handled below; an unhandled 'error' would crash the test process.
      socket.on('error', () => undefined);
      socket.on('close', (hadError: boolean) => this.#onClose(hadError));
    }
    this.pump();
  }

  /** Whether either side has closed. */
  get isBroken(): boolean {
    return this.#client.destroyed || this.#upstream.destroyed;
  }

  /** Lets data flow again (or stop) after the faults changed. */
  pump(): void {
    for (const direction of this.#directions) direction.pump();
  }

  /** Destroys both sides at once: the peers see a reset. */
  cut(): void {
    for (const direction of this.#directions) direction.stop();
    for (const socket of [this.#client, this.#upstream]) {
      if (!socket.destroyed) socket.resetAndDestroy();
    }
    this.#gone();
  }

  #onClose(hadError: boolean): void {
    if (this.#client.destroyed && this.#upstream.destroyed) {
      this.#gone();
      return;
    }
    // The other side is left hanging, as behind a dead link; it is cut on heal if it is still open.
    if (this.#faults.isBlackholed) return;
    if (hadError) {
      this.cut();
      return;
    }
    // A clean close: both ends of stream were passed on; the other side goes once what is queued is written.
    this.pump();
    for (const socket of [this.#client, this.#upstream]) {
      if (socket.destroyed) continue;
      if (socket.writableFinished) socket.destroy();
      else socket.once('finish', () => socket.destroy());
    }
  }

  #gone(): void {
    if (this.#isGone) return;
    this.#isGone = true;
    this.#onGone(this);
  }
}

/**
 * A loopback TCP proxy for tests (and the chaos soak): listens on
 * 127.0.0.1:0 and forwards each connection to 127.0.0.1:`targetPort`, with
 * faults that can be switched on and off while connections are open. It owns
 * its listener and every socket it accepted or opened; `close()` ends them all.
 * Nothing is shared between proxies.
 */
export class FaultProxy {
  /** The port the proxy listens on. */
  readonly port: number;
  readonly #server: Server;
  readonly #links = new Set<Link>();
  /** Sockets accepted but not yet linked (their upstream is still connecting), and refused ones. */
  readonly #loose = new Set<Socket>();
  readonly #faults: Faults = { isBlackholed: false, isRefusingNew: false, delayMs: 0, peakQueuedBytes: 0 };
  readonly #maxBufferedBytes: number;
  #targetPort: number;
  readonly #localAddress: string | undefined;
  #state: FaultProxyState = 'open';
  #accepted = 0;
  #closing: Promise<void> | undefined;

  private constructor(server: Server, port: number, options: FaultProxyOptions) {
    this.#server = server;
    this.port = port;
    this.#targetPort = options.targetPort;
    if (options.localAddress !== undefined && !/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(options.localAddress)) {
      throw new Error('a fault proxy connects from a loopback address only (127.0.0.0/8)');
    }
    this.#localAddress = options.localAddress;
    this.#maxBufferedBytes = options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
    server.on('connection', (socket) => this.#onConnection(socket));
  }

  /** Starts a proxy on 127.0.0.1:0 forwarding to 127.0.0.1:`targetPort`. */
  static async start(options: FaultProxyOptions): Promise<FaultProxy> {
    // allowHalfOpen: an end of stream from one side is passed on by the proxy itself, after what is queued.
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, LOOPBACK, () => {
        server.off('error', reject);
        resolve((server.address() as AddressInfo).port);
      });
    });
    return new FaultProxy(server, port, options);
  }

  /** `127.0.0.1:<port>`: what clients dial. */
  get target(): string {
    return `${LOOPBACK}:${this.port}`;
  }

  /** The proxy's state. */
  get state(): FaultProxyState {
    return this.#state;
  }

  /** Connections accepted so far (refused ones included). */
  get acceptedConnections(): number {
    return this.#accepted;
  }

  /**
   * The most bytes one direction of one connection has held so far (delayed, or
   * waiting for its receiver): at most `maxBufferedBytes` plus one read.
   */
  get peakBufferedBytes(): number {
    return this.#faults.peakQueuedBytes;
  }

  /** Proxied connections open right now. */
  get openConnections(): number {
    return this.#links.size;
  }

  /** Sends new connections to 127.0.0.1:`port`; open ones stay where they are. */
  setTarget(port: number): void {
    this.#targetPort = port;
  }

  /** Destroys every open connection at once (both sides see a reset). New ones are accepted as usual. */
  cutAll(): void {
    for (const link of [...this.#links]) link.cut();
    for (const socket of [...this.#loose]) socket.resetAndDestroy();
    this.#loose.clear();
  }

  /**
   * Stops forwarding in both directions without closing anything: bytes, ends
   * of stream and closes are held back, as behind a dead link, so each side
   * can only notice by itself (keepalive). New connections are accepted and
   * held the same way. Undone by {@link heal}.
   */
  blackhole(): void {
    this.#faults.isBlackholed = true;
    this.#pumpAll();
  }

  /** Holds every chunk for `ms` before forwarding it (0: no delay). Undone by {@link heal}. */
  delay(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`delay must be a non-negative number of ms, got ${ms}`);
    this.#faults.delayMs = ms;
  }

  /** Accepts new connections and resets them at once (open ones are left alone). Undone by {@link heal}. */
  refuseNew(): void {
    this.#faults.isRefusingNew = true;
  }

  /**
   * Switches every fault off. Connections one side of which closed while
   * blackholed are cut (as a peer answers a resumed connection it forgot
   * with a reset); the others resume, with what was held back.
   */
  heal(): void {
    this.#faults.isBlackholed = false;
    this.#faults.isRefusingNew = false;
    this.#faults.delayMs = 0;
    for (const link of [...this.#links]) {
      if (link.isBroken) link.cut();
    }
    this.#pumpAll();
  }

  /** Stops listening and destroys every connection. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#state = 'closed';
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.cutAll();
    await closed;
  }

  #pumpAll(): void {
    for (const link of this.#links) link.pump();
  }

  #onConnection(client: Socket): void {
    this.#accepted++;
    client.on('error', () => undefined);
    if (this.#state === 'closed' || this.#faults.isRefusingNew) {
      client.resetAndDestroy();
      return;
    }
    this.#loose.add(client);
    const upstream = createConnection({
      host: LOOPBACK,
      port: this.#targetPort,
      allowHalfOpen: true,
      ...(this.#localAddress === undefined ? {} : { localAddress: this.#localAddress }),
    });
    upstream.pause();
    const onEarlyClose = (): void => {
      this.#loose.delete(client);
      this.#loose.delete(upstream);
      if (!client.destroyed) client.resetAndDestroy();
      if (!upstream.destroyed) upstream.destroy();
    };
    this.#loose.add(upstream);
    upstream.on('error', () => undefined);
    upstream.once('close', onEarlyClose);
    client.once('close', onEarlyClose);
    upstream.once('connect', () => {
      upstream.off('close', onEarlyClose);
      client.off('close', onEarlyClose);
      this.#loose.delete(client);
      this.#loose.delete(upstream);
      if (this.#state === 'closed' || client.destroyed) {
        upstream.destroy();
        client.destroy();
        return;
      }
      const link = new Link(client, upstream, this.#faults, this.#maxBufferedBytes, (gone) => this.#links.delete(gone));
      this.#links.add(link);
    });
  }
}
