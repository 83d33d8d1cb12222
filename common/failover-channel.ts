import * as grpc from '@grpc/grpc-js';
import { ClosedError } from './errors.js';
import { shuffledAddresses } from './server-addresses.js';

/** Options of {@link FailoverChannel}. */
export interface FailoverChannelOptions {
  /** The addresses, already checked (`parseServerAddresses`); tried in a shuffled order. */
  addresses: readonly string[];
  /** Makes the channel of one address (each address has its own; made when first needed). */
  makeChannel: (address: string) => grpc.ChannelInterface;
  /** Uniform on [0, 1): the order the addresses are tried in. */
  random: () => number;
}

/**
 * A grpc-js channel over several control-plane addresses, one real channel
 * each (so each is verified against its own TLS name and keeps its own
 * subchannel and backoff). Calls go to the current address; when its channel
 * is in TRANSIENT_FAILURE (its connection failed) the next call goes to the
 * next address in the shuffled order, and an address found READY meanwhile is
 * preferred over one that is not. A call in flight when its address fails
 * fails as it would on a plain channel (UNAVAILABLE); nothing is retried here,
 * so a call is never sent twice. With one address it is that address's channel.
 */
export class FailoverChannel implements grpc.ChannelInterface {
  readonly #order: readonly string[];
  readonly #makeChannel: (address: string) => grpc.ChannelInterface;
  /** The channels made so far, by index in `#order`. */
  readonly #channels: (grpc.ChannelInterface | undefined)[];
  #current = 0;
  #isClosed = false;

  constructor(options: FailoverChannelOptions) {
    if (options.addresses.length === 0) throw new RangeError('FailoverChannel needs at least one address');
    this.#order = shuffledAddresses(options.addresses, options.random);
    this.#makeChannel = options.makeChannel;
    this.#channels = this.#order.map(() => undefined);
    // The first one is made now, as a plain channel would be: its options and credentials are checked at once.
    this.#channelAt(0);
  }

  /** The addresses in the order they are tried. */
  get addresses(): readonly string[] {
    return this.#order;
  }

  /** The address calls go to now. */
  get currentAddress(): string {
    return this.#order[this.#current] ?? '';
  }

  /** Sends the next calls to `address` (one of the list; ignored otherwise): the one a stream was just welcomed on. */
  prefer(address: string): void {
    const index = this.#order.indexOf(address);
    if (index !== -1) this.#current = index;
  }

  /**
   * Tries the addresses one after the other, from the current one, until one
   * connects (READY), each given at most `perAddressMs`; calls then go to it.
   * Resolves with its address, or undefined if none connected (calls then fail
   * UNAVAILABLE as on a plain channel).
   */
  async connect(perAddressMs: number): Promise<string | undefined> {
    for (let tried = 0; tried < this.#order.length && !this.#isClosed; tried++) {
      const index = (this.#current + tried) % this.#order.length;
      if (await isReadyWithin(this.#channelAt(index), perAddressMs)) {
        this.#current = index;
        return this.#order[index];
      }
    }
    return undefined;
  }

  createCall(...args: Parameters<grpc.ChannelInterface['createCall']>): ReturnType<grpc.ChannelInterface['createCall']> {
    if (this.#isClosed) throw new ClosedError('the channel is closed');
    return this.#pick().createCall(...args);
  }

  getConnectivityState(tryToConnect: boolean): grpc.connectivityState {
    return this.#currentChannel().getConnectivityState(tryToConnect);
  }

  watchConnectivityState(currentState: grpc.connectivityState, deadline: Date | number, callback: (error?: Error) => void): void {
    this.#currentChannel().watchConnectivityState(currentState, deadline, callback);
  }

  getChannelzRef(): ReturnType<grpc.ChannelInterface['getChannelzRef']> {
    return this.#currentChannel().getChannelzRef();
  }

  getTarget(): string {
    return this.#order.join(',');
  }

  /** Closes every channel it made. Idempotent. */
  close(): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    for (const channel of this.#channels) channel?.close();
  }

  #currentChannel(): grpc.ChannelInterface {
    return this.#channelAt(this.#current);
  }

  #channelAt(index: number): grpc.ChannelInterface {
    const made = this.#channels[index];
    if (made !== undefined) return made;
    const channel = this.#makeChannel(this.#order[index] ?? '');
    this.#channels[index] = channel;
    return channel;
  }

  /** The channel for the next call: the current one while it is not failing, else a READY one, else the next address. */
  #pick(): grpc.ChannelInterface {
    const current = this.#currentChannel();
    if (this.#order.length === 1) return current;
    const state = current.getConnectivityState(true);
    if (state === grpc.connectivityState.READY) return current;
    const ready = this.#channels.findIndex((channel) => channel?.getConnectivityState(false) === grpc.connectivityState.READY);
    if (ready !== -1) {
      this.#current = ready;
      return this.#currentChannel();
    }
    if (state !== grpc.connectivityState.TRANSIENT_FAILURE) return current;
    this.#current = (this.#current + 1) % this.#order.length;
    return this.#currentChannel();
  }
}

/** Whether `channel` reaches READY before it fails (TRANSIENT_FAILURE) or `withinMs` passes. grpc-js times the watch itself. */
function isReadyWithin(channel: grpc.ChannelInterface, withinMs: number): Promise<boolean> {
  const deadline = performance.timeOrigin + performance.now() + withinMs;
  return new Promise((resolve) => {
    const check = (): void => {
      const state = channel.getConnectivityState(true);
      if (state === grpc.connectivityState.READY) return resolve(true);
      if (state === grpc.connectivityState.TRANSIENT_FAILURE || state === grpc.connectivityState.SHUTDOWN) return resolve(false);
      channel.watchConnectivityState(state, deadline, (err) => (err === undefined ? check() : resolve(false)));
    };
    check();
  });
}
