/** Options of {@link UnverifiedStreams}. */
export interface UnverifiedStreamsOptions {
  /** Streams not yet verified that one client connection may hold at once. */
  maxPerConnection: number;
  /** Streams not yet verified held at once over every connection. */
  maxTotal: number;
}

/** Default of {@link UnverifiedStreamsOptions.maxPerConnection}: a host opens one Connect stream per connection. */
export const DEFAULT_MAX_UNVERIFIED_STREAMS_PER_CONNECTION = 8;
/** Default of {@link UnverifiedStreamsOptions.maxTotal}. */
export const DEFAULT_MAX_UNVERIFIED_STREAMS = 1_024;

/** A slot held by one stream until it is verified or gone; `release()` is idempotent. */
export interface UnverifiedStreamPermit {
  release(): void;
}

/**
 * Bounds the Connect streams held before their credential is verified, per
 * connection and over all, so memory an unauthenticated client can make the
 * control plane hold is bounded by these counts, not by what it opens. A stream
 * holds its slot from the moment it arrives until it is verified or its HTTP/2
 * stream is closed (a refused stream is reset at once, so it does not linger);
 * past either bound a new stream is refused at once. The table has one entry
 * per connection that holds a slot, so it is bounded by `maxTotal` too.
 */
export class UnverifiedStreams {
  readonly #maxPerConnection: number;
  readonly #maxTotal: number;
  readonly #byConnection = new Map<string, number>();
  #held = 0;
  #peakHeld = 0;
  #refusedTotal = 0;

  constructor(options: UnverifiedStreamsOptions) {
    this.#maxPerConnection = options.maxPerConnection;
    this.#maxTotal = options.maxTotal;
  }

  /** Unverified streams held now. */
  get held(): number {
    return this.#held;
  }

  /** The most unverified streams held at once since the last {@link resetPeak} (or ever). */
  get peakHeld(): number {
    return this.#peakHeld;
  }

  /** Connections holding at least one unverified stream now (entries in the table). */
  get connections(): number {
    return this.#byConnection.size;
  }

  /** Streams refused so far because a bound was reached. */
  get refusedTotal(): number {
    return this.#refusedTotal;
  }

  /** @internal Starts measuring {@link peakHeld} afresh. */
  resetPeak(): void {
    this.#peakHeld = this.#held;
  }

  /** A slot for a new stream on `connection`, or undefined when a bound is reached (refuse the stream). */
  tryAdmit(connection: string): UnverifiedStreamPermit | undefined {
    const onConnection = this.#byConnection.get(connection) ?? 0;
    if (onConnection >= this.#maxPerConnection || this.#held >= this.#maxTotal) {
      this.#refusedTotal++;
      return undefined;
    }
    this.#byConnection.set(connection, onConnection + 1);
    this.#held++;
    this.#peakHeld = Math.max(this.#peakHeld, this.#held);
    return new Permit(this, connection);
  }

  /** @internal Frees one slot of `connection` (what a permit's release does). */
  static free(streams: UnverifiedStreams, connection: string): void {
    streams.#held--;
    const left = (streams.#byConnection.get(connection) ?? 1) - 1;
    if (left <= 0) streams.#byConnection.delete(connection);
    else streams.#byConnection.set(connection, left);
  }
}

/**
 * One held slot. An object rather than a closure: every connected host's
 * stream keeps its permit for the connection's life (under tsx a named
 * closure also carries a property store of its own).
 */
class Permit implements UnverifiedStreamPermit {
  readonly #streams: UnverifiedStreams;
  readonly #connection: string;
  #isReleased = false;

  constructor(streams: UnverifiedStreams, connection: string) {
    this.#streams = streams;
    this.#connection = connection;
  }

  release(): void {
    if (this.#isReleased) return;
    this.#isReleased = true;
    UnverifiedStreams.free(this.#streams, this.#connection);
  }
}
