import type { ServerDuplexStream, StatusObject } from '@grpc/grpc-js';
import { StreamWriter, type WriteBounds } from '../../common/stream-writer.js';
import type { ControlMessage, Hello, HostMessage } from '../../gen/tether/v1/host.js';

/**
 * A session's lifecycle:
 * - `open`: Hello received and Welcome sent; envelopes flow both ways.
 * - `closed`: the stream ended (by either side); sends are dropped.
 */
export type HostSessionState = 'open' | 'closed';

/**
 * What an envelope is counted as against a host stream's byte bound: its
 * payload plus an allowance for the rest (ids, headers, a credential), an
 * estimate that spares serialising every envelope twice.
 */
export function envelopeBytes(message: ControlMessage): number {
  const batch = message.deliverBatch;
  if (batch !== undefined) {
    let bytes = 0;
    for (const deliver of batch.deliveries) bytes += (deliver.message?.payload.length ?? 0) + 512;
    return bytes;
  }
  return (message.deliver?.message?.payload.length ?? 0) + 512;
}

/** Shared by every session's Hello once its report (running and ended agents) was reconciled: never written to. */
const NO_ENTRIES: never[] = Object.freeze([]) as unknown as never[];

/**
 * One host's live stream. Envelopes are written in the order they were sent (a
 * TokenRotated sent before a Deliver reaches the host first), and writing waits
 * for `drain` whenever grpc-js reports a full buffer.
 */
export class HostSession {
  readonly hostId: string;
  readonly sessionId: string;
  /**
   * What the host said in its Hello. Its report (`running`, `ended`) is there
   * only until {@link forgetHelloReport}: a session lives as long as the
   * connection, and a host back with many agents would keep that list with it.
   */
  hello: Hello;
  readonly connectedAtMs: number;
  /** Host clock minus ours, from the last Ping/Pong; 0 until measured. */
  clockSkewMs = 0;
  /** Envelope-level violations so far on this stream. */
  violations = 0;
  /**
   * When the last message from the host arrived (our clock): where the
   * lost-host grace counts from once the stream is gone, however long the
   * transport took to notice a silent link.
   */
  lastContactMs: number;
  /** Made when first asked for ({@link closedSignal}): most sessions never are, and each would hold an AbortSignal (an EventTarget and its maps) for its life. */
  #closed: AbortController | undefined;
  #state: HostSessionState = 'open';
  readonly #call: ServerDuplexStream<HostMessage, ControlMessage>;
  readonly #writer: StreamWriter<ControlMessage>;

  constructor(options: {
    hostId: string;
    sessionId: string;
    hello: Hello;
    connectedAtMs: number;
    call: ServerDuplexStream<HostMessage, ControlMessage>;
  }) {
    this.hostId = options.hostId;
    this.sessionId = options.sessionId;
    this.hello = options.hello;
    this.connectedAtMs = options.connectedAtMs;
    this.lastContactMs = options.connectedAtMs;
    this.#call = options.call;
    this.#writer = new StreamWriter(options.call, { sizeOf: envelopeBytes });
  }

  /** Whether the host said in its Hello that it takes DeliverBatch envelopes (else: one Deliver per message). */
  get acceptsDeliverBatch(): boolean {
    return this.hello.acceptsDeliverBatch;
  }

  /** The session's state. */
  get state(): HostSessionState {
    return this.#state;
  }

  /** Aborted when the session closes: work tied to the session waits on it. */
  get closedSignal(): AbortSignal {
    if (this.#closed === undefined) {
      this.#closed = new AbortController();
      if (this.#state === 'closed') this.#closed.abort();
    }
    return this.#closed.signal;
  }

  /**
   * Drops the Hello's report of running and ended agents once it was
   * reconciled, and trims the lists kept (module names, commands, labels,
   * used for placement) to their length.
   */
  forgetHelloReport(): void {
    const hello = this.hello;
    const trimmed = <T>(list: T[]): T[] => (list.length === 0 ? NO_ENTRIES : list.slice());
    this.hello = {
      ...hello,
      labels: trimmed(hello.labels),
      allowedCommands: trimmed(hello.allowedCommands),
      modules: trimmed(hello.modules),
      running: NO_ENTRIES,
      ended: NO_ENTRIES,
    };
  }

  /** Envelopes waiting for the stream to drain. */
  get queued(): number {
    return this.#writer.queued;
  }

  /** Resolves once fewer than `below` envelopes wait to be written (or the session closed). */
  whenBelow(below: number): Promise<void> {
    return this.#writer.whenBelow(below);
  }

  /** Bytes of envelopes queued for this host or written and not yet flushed (see {@link envelopeBytes}). */
  get bufferedBytes(): number {
    return this.#writer.bufferedBytes;
  }

  /** Resolves once {@link trySend} of an envelope of `bytes` within `bounds` would be taken (or the session closed). */
  whenRoomFor(bytes: number, bounds: WriteBounds): Promise<void> {
    return this.#writer.whenRoomFor(bytes, bounds);
  }

  /**
   * Queues an envelope if it fits within `bounds` (one always fits when nothing
   * is buffered); false if it does not, or the session is closed.
   */
  trySend(message: ControlMessage, bounds: WriteBounds): boolean {
    if (this.#state === 'closed') return false;
    return this.#writer.offer(message, bounds);
  }

  /** Queues an envelope for the host whatever is buffered; dropped if the session is closed. */
  send(message: ControlMessage): void {
    if (this.#state === 'closed') return;
    this.#writer.write(message);
  }

  /** Ends the stream, with an error status if given. Idempotent. */
  close(error?: Partial<StatusObject>): void {
    if (this.#state === 'closed') return;
    this.markClosed();
    if (error !== undefined) this.#call.emit('error', error);
    else this.#call.end();
  }

  /** Marks the session closed after the stream ended from the other side. */
  markClosed(): void {
    this.#state = 'closed';
    this.#writer.close();
    this.#closed?.abort();
  }
}

/** The live session of each connected host. One per host: a newer one supersedes an older. */
export class HostSessions {
  readonly #byHost = new Map<string, HostSession>();
  readonly #bySessionId = new Map<string, HostSession>();

  /** The live session of `hostId`, if connected. */
  get(hostId: string): HostSession | undefined {
    return this.#byHost.get(hostId);
  }

  /** Whether a session with this id is still open. */
  isLive(sessionId: string): boolean {
    return this.#bySessionId.get(sessionId)?.state === 'open';
  }

  /** Registers `session`, returning the one it supersedes, if any. */
  add(session: HostSession): HostSession | undefined {
    const previous = this.#byHost.get(session.hostId);
    if (previous !== undefined) this.#bySessionId.delete(previous.sessionId);
    this.#byHost.set(session.hostId, session);
    this.#bySessionId.set(session.sessionId, session);
    return previous;
  }

  /** Forgets `session` if it is still the registered one; true if it was. */
  remove(session: HostSession): boolean {
    this.#bySessionId.delete(session.sessionId);
    if (this.#byHost.get(session.hostId) !== session) return false;
    this.#byHost.delete(session.hostId);
    return true;
  }

  /** Every live session. */
  all(): HostSession[] {
    return [...this.#byHost.values()];
  }

  /** How many hosts are connected. */
  get size(): number {
    return this.#byHost.size;
  }
}
