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
import { bearerInterceptor } from './call-credentials.js';
import type { CredentialSource } from './credential-source.js';
import { assertChannelAllowed } from './loopback.js';
import { fromServiceError, isServiceError } from './service-errors.js';

/** Options of {@link AgentClient}. */
export interface AgentClientOptions {
  /** The control plane, `host:port`. */
  target: string;
  /** Where the agent's token is read at each call. */
  source: CredentialSource;
  /** TLS channel credentials. Without them (or with insecure ones) the channel is plaintext, allowed to loopback only. */
  channelCredentials?: grpc.ChannelCredentials;
  /** grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
  /** @internal Share an existing channel (the host's); the client then does not close it. */
  channel?: grpc.Channel;
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
  readonly #deadlineMs: number;
  readonly #isChannelOwned: boolean;

  /** Makes the client; throws InvalidArgumentError for a plaintext non-loopback target. */
  constructor(options: AgentClientOptions) {
    // A shared channel (the host's) was checked by whoever made it.
    if (options.channel === undefined) assertChannelAllowed(options.target, options.channelCredentials);
    this.#client = new GeneratedAgentServiceClient(
      options.target,
      options.channelCredentials ?? grpc.credentials.createInsecure(),
      {
        ...options.channelOptions,
        interceptors: [bearerInterceptor(options.source)],
        ...(options.channel === undefined ? {} : { channelOverride: options.channel }),
      },
    );
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
      const onAbort = (): void => call.cancel();
      const call = start((err, response) => {
        signal?.removeEventListener('abort', onAbort);
        if (err !== null) reject(err);
        else resolve(response);
      })(new grpc.Metadata(), { deadline: deadlineAfter(this.#deadlineMs) });
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

/** A grpc-js deadline `ms` from now. grpc-js measures deadlines on the real clock itself. */
function deadlineAfter(ms: number): grpc.Deadline {
  return new Date(performance.timeOrigin + performance.now() + ms);
}
