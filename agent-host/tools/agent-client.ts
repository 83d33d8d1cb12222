import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import {
  AgentServiceClient as GeneratedAgentServiceClient,
  type CompleteResponse,
  type HeartbeatResponse,
  type ReportStatusResponse,
  type MintTokenResponse,
  type WhoAmIResponse,
} from '../../gen/tether/v1/agent.js';
import type { OutgoingMessage, SendMessagesResponse } from '../../gen/tether/v1/common.js';
import { FailoverChannel } from '../../common/failover-channel.js';
import { parseServerAddresses } from '../../common/server-addresses.js';
import { describeFailure } from './call-credentials.js';
import { wellFormedToken, type CredentialSource } from './credential-source.js';
import { assertChannelAllowed } from './loopback.js';
import { fromServiceError, isServiceError } from './service-errors.js';

/** Options of {@link AgentClient}. */
export interface AgentClientOptions {
  /**
   * The control plane, `host:port`, or several comma-separated (`a:7443,b:7443`,
   * as the host passes in `TETHER_SERVER`): one channel each, tried in a
   * shuffled order; after a call fails because its address cannot be reached
   * (UNAVAILABLE, as with one address), the next calls go to the next address.
   */
  target: string;
  /** Where the agent's token is read at each call. */
  source: CredentialSource;
  /** TLS channel credentials. Without them (or with insecure ones) the channel is plaintext, allowed to loopback only. */
  channelCredentials?: grpc.ChannelCredentials;
  /** grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
  /** @internal Share an existing channel (the host's); the client then does not close it. */
  channel?: grpc.ChannelInterface;
  /** Per-call deadline. Default 30 s. */
  deadlineMs?: number;
}

/** Per-call options. */
export interface CallOptions {
  /** Cancels the call (it rejects with an AbortError). */
  signal?: AbortSignal;
}

/**
 * A typed client of `AgentService` that calls as one agent. It reads the token
 * from its source at each call; on UNAUTHENTICATED it re-reads the source and
 * retries once (a rotation may have raced the call), never more. A plaintext
 * channel to a non-loopback target is refused in the constructor
 * (InvalidArgumentError), before any connection. Failures reject with the
 * typed error of their status (`fromServiceError`).
 */
export class AgentClient {
  readonly #client: GeneratedAgentServiceClient;
  readonly #source: CredentialSource;
  readonly #deadlineMs: number;
  readonly #isChannelOwned: boolean;

  /** Makes the client; throws InvalidArgumentError for a plaintext non-loopback target. */
  constructor(options: AgentClientOptions) {
    // Checked before any channel exists; a shared channel (the host's) was checked by whoever made it.
    const addresses = options.channel === undefined && options.target.includes(',') ? parseServerAddresses(options.target) : undefined;
    if (options.channel === undefined) assertChannelAllowed(options.target, options.channelCredentials);
    const credentials = options.channelCredentials ?? grpc.credentials.createInsecure();
    const channel = options.channel ?? (addresses === undefined ? undefined : failoverChannel(addresses, credentials, options.channelOptions));
    this.#client = new GeneratedAgentServiceClient(options.target, credentials, {
      ...options.channelOptions,
      // The token goes into each call's metadata in #once, not through an interceptor: the source is synchronous,
      // and an interceptor layer cost about a tenth of a call's client-side CPU (issue 16's tool-call profile).
      interceptors: [],
      ...(channel === undefined ? {} : { channelOverride: channel }),
    });
    this.#source = options.source;
    this.#deadlineMs = options.deadlineMs ?? 30_000;
    this.#isChannelOwned = options.channel === undefined;
  }

  /** Tells the control plane `agentId` (which must be this agent) is alive. */
  heartbeat(agentId: string, options: CallOptions = {}): Promise<HeartbeatResponse> {
    return this.#call((done) => (metadata, callOptions) => this.#client.heartbeat({ agentId }, metadata, callOptions, done), options);
  }

  /** What the control plane sees in this agent's token. */
  whoAmI(options: CallOptions = {}): Promise<WhoAmIResponse> {
    return this.#call((done) => (metadata, callOptions) => this.#client.whoAmI({}, metadata, callOptions, done), options);
  }

  /**
   * A short-lived token naming this agent for another service, `audience`
   * (AgentService.MintToken). Tools normally go through `AudienceTokens`,
   * which caches and refreshes these.
   */
  mintToken(audience: string, options: CallOptions & { ttlMs?: number } = {}): Promise<MintTokenResponse> {
    const { ttlMs, ...callOptions } = options;
    const request = { audience, ...(ttlMs === undefined ? {} : { ttlMs }) };
    return this.#call((done) => (metadata, grpcOptions) => this.#client.mintToken(request, metadata, grpcOptions, done), callOptions);
  }

  /**
   * Sends messages to `agentId` as this agent (the control plane takes `from`
   * from the token). Give each an idempotency key to make a retried send safe.
   */
  sendMessages(agentId: string, messages: readonly OutgoingMessage[], options: CallOptions = {}): Promise<SendMessagesResponse> {
    return this.#call(
      (done) => (metadata, callOptions) => this.#client.sendMessages({ agentId, messages: [...messages] }, metadata, callOptions, done),
      options,
    );
  }

  /** Reports what this agent (`agentId`, which must be this agent) is doing. */
  reportStatus(agentId: string, status: string, options: CallOptions = {}): Promise<ReportStatusResponse> {
    return this.#call((done) => (metadata, callOptions) => this.#client.reportStatus({ agentId, status }, metadata, callOptions, done), options);
  }

  /** Says this agent's work is done: it ends and its tokens are revoked. */
  complete(agentId: string, detail: string, options: CallOptions = {}): Promise<CompleteResponse> {
    return this.#call((done) => (metadata, callOptions) => this.#client.complete({ agentId, detail }, metadata, callOptions, done), options);
  }

  /** Closes the channel if this client made it. Idempotent. */
  close(): void {
    if (this.#isChannelOwned) this.#client.close();
  }

  async #call<T>(
    start: (done: (err: grpc.ServiceError | null, response: T) => void) => (metadata: grpc.Metadata, options: grpc.CallOptions) => grpc.ClientUnaryCall,
    options: CallOptions,
  ): Promise<T> {
    try {
      return await this.#once(start, options);
    } catch (err) {
      if (!isServiceError(err) || err.code !== status.UNAUTHENTICATED || options.signal?.aborted === true) throw fromServiceError(err);
    }
    try {
      return await this.#once(start, options);
    } catch (err) {
      throw fromServiceError(err);
    }
  }

  #once<T>(
    start: (done: (err: grpc.ServiceError | null, response: T) => void) => (metadata: grpc.Metadata, options: grpc.CallOptions) => grpc.ClientUnaryCall,
    options: CallOptions,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const signal = options.signal;
      if (signal?.aborted === true) {
        reject(new DOMException('aborted', 'AbortError'));
        return;
      }
      let metadata: grpc.Metadata;
      try {
        metadata = bearerMetadata(wellFormedToken(this.#source.get()));
      } catch (err) {
        // Nothing is sent without its credential: the attempt fails as a refusal would (and is retried once).
        reject(unsentCall(`no credential to send: ${describeFailure(err)}`));
        return;
      }
      let detach: (() => void) | undefined;
      const call = start((err, response) => {
        detach?.();
        if (err !== null) reject(err);
        else resolve(response);
      })(metadata, { deadline: deadlineAfter(this.#deadlineMs) });
      // No listener (nor closure) for a call without a signal: under tsx each named closure costs a defineProperty.
      if (signal !== undefined) detach = cancelOnAbort(signal, call);
    });
  }
}

/** One channel per address, each with its own subchannels. */
function failoverChannel(addresses: readonly string[], credentials: grpc.ChannelCredentials, channelOptions: grpc.ChannelOptions | undefined): FailoverChannel {
  return new FailoverChannel({
    addresses,
    makeChannel: (address) => new grpc.Channel(address, credentials, { ...channelOptions, 'grpc.use_local_subchannel_pool': 1 }),
    random: Math.random,
  });
}

/** A grpc-js deadline `ms` from now (milliseconds since the epoch). grpc-js measures deadlines on the real clock itself. */
function deadlineAfter(ms: number): grpc.Deadline {
  return performance.timeOrigin + performance.now() + ms;
}

/** Cancels `call` when `signal` aborts; returns what removes the listener. */
function cancelOnAbort(signal: AbortSignal, call: grpc.ClientUnaryCall): () => void {
  const onAbort = (): void => call.cancel();
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

/** Call metadata carrying `authorization: Bearer <token>`. */
function bearerMetadata(token: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

/** The UNAUTHENTICATED ServiceError of an attempt that was never sent (no token to send); `details` never holds a token. */
function unsentCall(details: string): grpc.ServiceError {
  return Object.assign(new Error(`${status.UNAUTHENTICATED} UNAUTHENTICATED: ${details}`), { code: status.UNAUTHENTICATED, details, metadata: new grpc.Metadata() });
}
