import { randomBytes, randomUUID } from 'node:crypto';
import type { ServerHttp2Stream } from 'node:http2';
import { Metadata, status, type ServerDuplexStream, type StatusObject } from '@grpc/grpc-js';
import { decodeJwt } from 'jose';
import type { Clock } from '../../common/clock.js';
import { InvalidArgumentError, NotFoundError, ResourceExhaustedError, TetherError, TokenExpiredError, UnauthenticatedError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import { PROTOCOL_VERSION, REFUSAL_METADATA_KEY, RETRY_AFTER_METADATA_KEY, type Refusal } from '../../common/protocol.js';
import type { Ack, ControlMessage, Hello, HostMessage, Pong } from '../../gen/tether/v1/host.js';
import { toCredential, type AgentManager } from '../agents/agent-manager.js';
import { parseAuthorization, type Authenticator, type PresentedCredential } from '../auth/authenticator.js';
import type { ControlPlaneEvents } from '../events.js';
import { http2StreamOf, resetWhenAnswered } from '../grpc/http2-stream.js';
import { toStatus } from '../grpc/status.js';
import { hostRotationDueAtMs, ROTATION_WINDOW_START, ROTATION_WINDOW_WIDTH } from '../rotation/rotation-policy.js';
import type { RotationReason } from '../rotation/rotation-reason.js';
import type { HostRecord, LabelRecord, Store } from '../store/store.js';
import type { TokenIssuer } from '../tokens/token-issuer.js';
import type { IssuedToken, TokenClaims } from '../tokens/token-kinds.js';
import { TokenRejectedError, type TokenVerifier } from '../tokens/token-verifier.js';
import type { DeliveryManager } from '../delivery/delivery-manager.js';
import type { HostDrains } from './host-drain.js';
import { ConnectLimiter, type ConnectLimiterOptions, type HeardAttempt } from './connect-limiter.js';
import { DEFAULT_MAX_CONCURRENT_HELLOS, HelloAdmission } from './hello-admission.js';
import { HostCredentials } from './host-credentials.js';
import { joinSecretMatches, mintJoinToken, parseJoinToken } from './join-token.js';
import { Deadlines, type Deadline } from './deadlines.js';
import { HostSession, type HostSessions } from './host-session.js';
import { peerSource } from './peer-source.js';
import {
  DEFAULT_MAX_UNVERIFIED_STREAMS,
  DEFAULT_MAX_UNVERIFIED_STREAMS_PER_CONNECTION,
  UnverifiedStreams,
  type UnverifiedStreamPermit,
} from './unverified-streams.js';

/** A host token expired longer ago than tolerance plus this is refused for good. */
const EXPIRED_REFUSAL_MARGIN_MS = 5 * 60_000;
/** Incoming envelopes processed per stream before it is paused. */
const MAX_INBOUND_BACKLOG = 256;

/** Options of {@link HostService}. */
export interface HostServiceOptions {
  /** Drains a host that asks for it (DrainRequest, at its SIGTERM), and says which hosts are drained. */
  drains: HostDrains;
  store: Store;
  issuer: TokenIssuer;
  verifier: TokenVerifier;
  authenticator: Authenticator;
  agents: AgentManager;
  delivery: DeliveryManager;
  sessions: HostSessions;
  clock: Clock;
  logger: Logger;
  events: ControlPlaneEvents;
  hostTokenTtlMs: number;
  agentTokenTtlMs: number;
  clockToleranceMs: number;
  /** Told to each host in Welcome: it fences itself a margin before this much time without contact. */
  lostHostGraceMs: number;
  heartbeatIntervalMs: number;
  joinTokenTtlMs: number;
  maxPayloadBytes: number;
  deliveryWindow: number;
  /** App-level Ping towards each host (keeps data flowing through proxies, measures skew). */
  pingIntervalMs: number;
  /** Violations a stream may commit before it is ended. */
  violationBudget: number;
  /** Limits on Connect attempts with bad credentials; defaults in {@link ConnectLimiterOptions}. */
  connectLimits?: ConnectLimits;
  /** Hellos processed at once at most; the excess is deferred with a retry-after. Default {@link DEFAULT_MAX_CONCURRENT_HELLOS}. */
  maxConcurrentHellos?: number;
  /** The unit of a deferred Hello's retry-after (see {@link HelloAdmission}). Default 1 s. */
  helloRetryUnitMs?: number;
  /** Uniform on [0, 1): spreads deferred hosts' retry-afters. */
  random: () => number;
}

/** The tunable limits on Connect attempts: the {@link ConnectLimiter}'s, and the bounds on streams not yet verified. */
export type ConnectLimits = Partial<Pick<ConnectLimiterOptions, 'windowMs' | 'maxFailuresPerSource' | 'globalBudget' | 'maxSources'>> & {
  /** Connect streams not yet verified one client connection may hold at once. Default {@link DEFAULT_MAX_UNVERIFIED_STREAMS_PER_CONNECTION}. */
  maxUnverifiedStreamsPerConnection?: number;
  /** Connect streams not yet verified held at once in all. Default {@link DEFAULT_MAX_UNVERIFIED_STREAMS}. */
  maxUnverifiedStreams?: number;
};

/** A stream refused: the status to end it with. */
class StreamRefusedError extends TetherError {
  readonly refusal: Refusal | undefined;

  constructor(message: string, refusal?: Refusal) {
    super('unauthenticated', message);
    this.refusal = refusal;
  }
}

/** A Hello deferred because too many are processed at once: RESOURCE_EXHAUSTED with a retry-after, never final. */
class HelloDeferredError extends TetherError {
  readonly retryAfterMs: number;

  constructor(retryAfterMs: number) {
    super('resource-exhausted', 'too many hosts are connecting; retry later');
    this.retryAfterMs = retryAfterMs;
  }
}

/** Who opened a stream. */
interface StreamIdentity {
  hostId: string;
  /** Set when the host joined with a join token: its first credential. */
  joined?: IssuedToken;
  /** Generation of the host credential the stream was opened with (or, after a join, was issued). */
  generation: number;
}

/** Whether `err` is a credential refused (a failure the connect limiter counts), not a busy or broken control plane. */
function isCredentialFailure(err: unknown): boolean {
  return err instanceof TetherError && (err.code === 'unauthenticated' || err.code === 'token-expired' || err.code === 'token-revoked');
}

/** Per-stream state while it is open. */
interface StreamState {
  sessionId: string;
  identity: StreamIdentity;
  session: HostSession | undefined;
  /** The session's Ping, once it has one (see {@link HostService.connect}'s Hello). */
  ping: PingDeadline | undefined;
  /** The session's host credential rotation, once it has one. */
  rotation: RotationDeadline | undefined;
  /** The stream has ended (or was refused); nothing more is done for it. */
  isEnded: boolean;
  /** Its HTTP/2 stream (undefined if grpc-js hid it): reset when refused before it was verified. */
  http2: ServerHttp2Stream | undefined;
  /** Its slot among the streams not yet verified; released once verified or closed. */
  unverified: UnverifiedStreamPermit | undefined;
}

/** Whether `session` is still open (a call, so a state read before an await does not narrow the one after it). */
function isOpen(session: HostSession): boolean {
  return session.state === 'open';
}

/** What a session's deadlines call back into: one object for the whole service, not a closure per session. */
interface SessionDeadlineDriver {
  ping(deadline: PingDeadline): void;
  checkHostCredential(deadline: RotationDeadline): void;
}

/** A session's next app-level Ping, and the send times of those not yet answered. */
class PingDeadline implements Deadline {
  dueAtMs = 0;
  heapIndex = -1;
  readonly session: HostSession;
  /** Send times of Pings not yet answered (a few: cleared past eight). */
  readonly sentAtMs: number[] = [];
  readonly #driver: SessionDeadlineDriver;

  constructor(session: HostSession, driver: SessionDeadlineDriver) {
    this.session = session;
    this.#driver = driver;
  }

  fire(): void {
    this.#driver.ping(this);
  }
}

/** When a session's host credential is next looked at for rotation. */
class RotationDeadline implements Deadline {
  dueAtMs = 0;
  heapIndex = -1;
  readonly session: HostSession;
  /** The generation the host holds (as far as this stream knows). */
  held: number;
  readonly #driver: SessionDeadlineDriver;

  constructor(session: HostSession, held: number, driver: SessionDeadlineDriver) {
    this.session = session;
    this.held = held;
    this.#driver = driver;
  }

  fire(): void {
    this.#driver.checkHostCredential(this);
  }
}

/**
 * `HostService.Connect` and host enrollment. The host's identity is the subject
 * of its verified token (or the host record its join token names); every
 * agent id a host mentions is checked against what was assigned to it.
 */
export class HostService {
  readonly #options: HostServiceOptions;
  readonly #logger: Logger;
  /** Streams open right now (authenticated or not): join-token leases are held by these. */
  readonly #liveStreams = new Set<string>();
  readonly #limiter: ConnectLimiter;
  readonly #unverified: UnverifiedStreams;
  readonly #credentials: HostCredentials;
  readonly #admission: HelloAdmission;
  /** Every session's Pings and credential rotations, on one clock wait. */
  readonly #deadlines: Deadlines;
  readonly #driver: SessionDeadlineDriver;
  #hasWarnedNoHttp2 = false;

  constructor(options: HostServiceOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'hosts' });
    const { maxUnverifiedStreamsPerConnection, maxUnverifiedStreams, ...limiterOptions } = options.connectLimits ?? {};
    this.#limiter = new ConnectLimiter({ ...limiterOptions, clock: options.clock, logger: this.#logger });
    this.#unverified = new UnverifiedStreams({
      maxPerConnection: maxUnverifiedStreamsPerConnection ?? DEFAULT_MAX_UNVERIFIED_STREAMS_PER_CONNECTION,
      maxTotal: maxUnverifiedStreams ?? DEFAULT_MAX_UNVERIFIED_STREAMS,
    });
    this.#admission = new HelloAdmission({
      clock: options.clock,
      random: options.random,
      maxConcurrent: options.maxConcurrentHellos ?? DEFAULT_MAX_CONCURRENT_HELLOS,
      ...(options.helloRetryUnitMs === undefined ? {} : { retryUnitMs: options.helloRetryUnitMs }),
    });
    this.#credentials = new HostCredentials({ store: options.store, issuer: options.issuer, clock: options.clock, hostTokenTtlMs: options.hostTokenTtlMs });
    this.#deadlines = new Deadlines(options.clock, (err: unknown) => this.#logger.error({ err }, 'host session deadline failed'));
    this.#driver = {
      ping: (deadline) => this.#ping(deadline),
      // Handles its own failures (logged, no more rotations on that stream): this catch is for a bug in that handling.
      checkHostCredential: (deadline) => {
        this.#checkHostCredential(deadline).catch((err: unknown) => this.#logger.error({ err, hostId: deadline.session.hostId }, 'host credential loop failed'));
      },
    };
  }

  /** @internal Pings and credential rotations scheduled (two per open session at most; none once every session is gone). */
  get scheduledDeadlines(): number {
    return this.#deadlines.size;
  }

  /** @internal Connect streams open right now, authenticated or not (each ends up forgotten when it ends). */
  get openStreams(): number {
    return this.#liveStreams.size;
  }

  /** @internal The connect limiter's table of failing sources: its size now and its peak (bounded by `maxSources`). */
  get connectLimiterSources(): { tracked: number; peak: number } {
    return { tracked: this.#limiter.trackedSources, peak: this.#limiter.peakTrackedSources };
  }

  /** @internal Connect streams not yet verified: held now, the most at once, connections holding some, refused at a bound. */
  get unverifiedStreams(): Pick<UnverifiedStreams, 'held' | 'peakHeld' | 'connections' | 'refusedTotal' | 'resetPeak'> {
    return this.#unverified;
  }

  /** @internal The Hello admission gate: Hellos in flight, the most at once, deferrals so far. */
  get helloAdmission(): Pick<HelloAdmission, 'inFlight' | 'peakInFlight' | 'deferredTotal' | 'resetPeak'> {
    return this.#admission;
  }

  /** Creates a host record and its one-time join token (shown once, stored hashed). */
  async enroll(name: string, joinTtlMs: number): Promise<{ host: HostRecord; joinToken: string }> {
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/.test(name)) throw new InvalidArgumentError('name must match [A-Za-z0-9][A-Za-z0-9_-]{0,62}');
    const nowMs = this.#options.clock.now();
    const hostId = `${name}-${randomBytes(4).toString('hex')}`;
    const { joinToken, secretHash } = mintJoinToken(hostId);
    const host: HostRecord = {
      hostId,
      name,
      state: 'enrolled',
      joinSecretHash: secretHash,
      joinExpiresAtMs: nowMs + (joinTtlMs > 0 ? joinTtlMs : this.#options.joinTokenTtlMs),
      joinLeaseSessionId: null,
      credentialGeneration: 0,
      minValidGeneration: 0,
      credentialIssuedAtMs: 0,
      credentialExpiresAtMs: 0,
      capacity: 0,
      labels: [],
      lastSeenMs: 0,
      createdAtMs: nowMs,
      isSchedulable: true,
    };
    await this.#options.store.insertHost(host);
    this.#logger.info({ hostId }, 'host enrolled');
    return { host, joinToken };
  }

  /** Whether a verified host token has been revoked or superseded. */
  async isHostTokenRevoked(claims: TokenClaims): Promise<boolean> {
    const host = await this.#options.store.getHost(claims.subject);
    if (host === undefined || host.state === 'revoked') return true;
    return claims.generation < host.minValidGeneration || claims.generation > host.credentialGeneration;
  }

  /**
   * The grpc-js handler of `Connect`. What a flood sends is refused here, at
   * once and at the cost of its status alone (no state, no listeners, no error
   * built, no log line: the limiter logs a count per window), its HTTP/2 stream
   * reset once answered: a credential missing or malformed; a join token from
   * a source the limiter does not hear; a stream past the bounds on streams not
   * yet verified. Everything else is verified in {@link #authenticate}.
   */
  connect(call: ServerDuplexStream<HostMessage, ControlMessage>): void {
    const { connection, source } = peerSource(call.getPeer());
    const http2 = http2StreamOf(call);
    if (http2 === undefined && !this.#hasWarnedNoHttp2) {
      this.#hasWarnedNoHttp2 = true;
      this.#logger.warn('no HTTP/2 stream under a Connect call (grpc-js changed?): refused streams are not reset');
    }
    const presented = parseAuthorization(call.metadata);
    if (typeof presented === 'string') {
      this.#limiter.recordFailure(source);
      this.#refuseAtOnce(call, http2, status.UNAUTHENTICATED, `${presented} authorization`);
      return;
    }
    const heard = this.#limiter.tryHear(source);
    // A bearer token is verified whatever its source (a signature check): only a join token, which is checked against the store, goes unheard.
    if (heard === undefined && presented.scheme === 'join') {
      this.#refuseAtOnce(call, http2, status.RESOURCE_EXHAUSTED, 'too many failed connects from this address; retry later');
      return;
    }
    const unverified = this.#unverified.tryAdmit(connection);
    if (unverified === undefined) {
      heard?.settle(false);
      this.#refuseAtOnce(call, http2, status.RESOURCE_EXHAUSTED, 'too many unauthenticated streams; retry later');
      return;
    }
    // The slot is held for as long as the HTTP/2 stream is, not only until grpc-js is done with the call.
    let releaseOnClose: (() => void) | undefined;
    if (http2 !== undefined) {
      if (http2.closed || http2.destroyed) unverified.release();
      else {
        releaseOnClose = unverified.release.bind(unverified);
        http2.once('close', releaseOnClose);
      }
    }
    const sessionId = randomUUID();
    this.#liveStreams.add(sessionId);
    const state: StreamState = {
      sessionId,
      identity: { hostId: '', generation: 0 },
      session: undefined,
      ping: undefined,
      rotation: undefined,
      isEnded: false,
      http2,
      unverified,
    };
    // Bound, not a closure: every connected host's stream holds it for the connection's life.
    const onEnded = this.#onStreamEnded.bind(this, state);
    call.on('cancelled', onEnded);
    call.on('close', onEnded);
    call.on('finish', onEnded);
    call.on('error', onEnded);
    call.on('end', () => {
      onEnded();
      call.end();
    });

    let backlog = 0;
    let chain: Promise<void> = this.#authenticate(presented, heard, sessionId).then(
      (identity) => {
        state.identity = identity;
        // Through `state`, not the locals: this function's context lives as long as the stream's listeners, and would keep them.
        state.unverified?.release();
        state.unverified = undefined;
        // Nothing waits for the stream's close any more: its listener would be held for the connection's life.
        if (releaseOnClose !== undefined) state.http2?.removeListener('close', releaseOnClose);
        releaseOnClose = undefined;
      },
      (err: unknown) => {
        // Refused: the status goes out and the stream is reset, then it is forgotten like any that
        // ended (a flag set before the refusal made onEnded skip its cleanup, so every refused stream stayed "live").
        if (!state.isEnded) this.#refuse(call, err, state.http2);
        onEnded();
        throw err;
      },
    );
    call.on('data', (message: HostMessage) => {
      if (state.session !== undefined) state.session.lastContactMs = this.#options.clock.now();
      backlog++;
      if (backlog > MAX_INBOUND_BACKLOG) call.pause();
      chain = chain
        .then(() => (state.isEnded ? undefined : this.#onMessage(call, state, message)))
        .catch((err: unknown) => {
          if (!state.isEnded) {
            this.#refuse(call, err, state.unverified === undefined ? undefined : state.http2);
            onEnded();
          }
        })
        .finally(() => {
          backlog--;
          if (backlog === MAX_INBOUND_BACKLOG) call.resume();
        });
    });
    chain.catch(() => undefined);
  }

  /** A stream ended (either side, or refused): forget it, and its session if it had one. Idempotent. */
  #onStreamEnded(state: StreamState): void {
    if (state.isEnded) return;
    state.isEnded = true;
    this.#liveStreams.delete(state.sessionId);
    // Without its HTTP/2 stream to watch, the slot goes when grpc-js is done with the call.
    if (state.http2 === undefined) state.unverified?.release();
    this.#releaseSession(state);
  }

  /** Closes and unregisters the stream's session, if any. */
  #releaseSession(state: StreamState): void {
    const session = state.session;
    if (session === undefined) return;
    session.markClosed();
    if (state.ping !== undefined) this.#deadlines.delete(state.ping);
    if (state.rotation !== undefined) this.#deadlines.delete(state.rotation);
    this.#options.delivery.detachSession(session);
    if (this.#options.sessions.remove(session)) {
      this.#options.events.emit('host-disconnected', { hostId: session.hostId, sessionId: state.sessionId, lastContactMs: session.lastContactMs });
      this.#logger.info({ hostId: session.hostId, sessionId: state.sessionId }, 'host disconnected');
    }
  }

  /** Refuses a stream before anything was kept for it; resets its HTTP/2 stream once answered. */
  #refuseAtOnce(call: ServerDuplexStream<HostMessage, ControlMessage>, http2: ServerHttp2Stream | undefined, code: status, details: string): void {
    call.emit('error', { code, details, metadata: new Metadata() } satisfies Partial<StatusObject>);
    if (http2 !== undefined) resetWhenAnswered(http2);
  }

  /**
   * Ends a stream with the status for `err` (and a final refusal in trailing
   * metadata, if any); given its HTTP/2 stream, resets that once the status is
   * out, so a client that never ends its side cannot make us keep it.
   */
  #refuse(call: ServerDuplexStream<HostMessage, ControlMessage>, err: unknown, http2?: ServerHttp2Stream): void {
    const metadata = new Metadata();
    if (err instanceof StreamRefusedError && err.refusal !== undefined) metadata.set(REFUSAL_METADATA_KEY, err.refusal);
    if (err instanceof HelloDeferredError) metadata.set(RETRY_AFTER_METADATA_KEY, String(err.retryAfterMs));
    const statusObject = toStatus(err, this.#logger, metadata);
    if (err instanceof TetherError && err.code === 'unauthenticated') {
      // Debug only: a flood of bad connects is summarised once per window by the limiter.
      this.#logger.debug({ reason: err.message }, 'host stream refused');
    }
    call.emit('error', statusObject);
    if (http2 !== undefined) resetWhenAnswered(http2);
  }

  /**
   * Verifies a Connect's credential. Failures count against the source
   * address, never the identity the credential claims. A source the limiter
   * refuses is not heard with a join token (a store read to check), but a
   * bearer token from it is still verified (a signature check, cached) and let
   * in when valid: the holder of a valid credential is never denied by what
   * others sent, from anywhere.
   */
  async #authenticate(presented: PresentedCredential, heard: HeardAttempt | undefined, sessionId: string): Promise<StreamIdentity> {
    if (heard === undefined) {
      // A bearer token from a source not heard: verified, not explained (a failure costs no store read, only the signature check).
      try {
        const claims = await this.#options.authenticator.host(presented.credential);
        return { hostId: claims.subject, generation: claims.generation };
      } catch (err) {
        throw new ResourceExhaustedError('too many failed connects from this address; retry later', { cause: err });
      }
    }
    try {
      let result: StreamIdentity;
      if (presented.scheme === 'join') result = await this.#join(presented.credential, sessionId);
      else {
        const claims = await this.#hostClaims(presented.credential);
        result = { hostId: claims.subject, generation: claims.generation };
      }
      heard.settle(false);
      return result;
    } catch (err) {
      heard.settle(isCredentialFailure(err));
      // A refused bearer token was counted by the authenticator; a refused join token is counted here.
      if (presented.scheme === 'join' && isCredentialFailure(err)) {
        const reason = err instanceof StreamRefusedError && err.refusal !== undefined ? `join-${err.refusal}` : 'join-refused';
        this.#options.events.emit('auth-failure', { principal: 'host', reason });
      }
      throw err;
    }
  }

  async #hostClaims(token: string): Promise<TokenClaims> {
    try {
      return await this.#options.authenticator.host(token);
    } catch (err) {
      throw await this.#explainHostTokenFailure(token, err);
    }
  }

  /** Decides whether a refused host token is refused for good, and says so. */
  async #explainHostTokenFailure(token: string, err: unknown): Promise<unknown> {
    let subject: string | undefined;
    let expiresAtS: number | undefined;
    try {
      const payload = decodeJwt(token);
      subject = payload.sub;
      expiresAtS = payload.exp;
    } catch {
      return err;
    }
    if (subject === undefined) return err;
    const host = await this.#options.store.getHost(subject);
    if (err instanceof TokenRejectedError && err.reason === 'key-revoked' && host !== undefined) {
      // The key was compromised: this credential can never be trusted again, and it cannot be rotated without trusting it.
      return new StreamRefusedError('host credential signed by a revoked signing key; enroll the host again', 'revoked');
    }
    if (err instanceof TokenExpiredError) {
      const limitMs = (expiresAtS ?? 0) * 1000 + this.#options.clockToleranceMs + EXPIRED_REFUSAL_MARGIN_MS;
      if (host !== undefined && this.#options.clock.now() > limitMs) return new StreamRefusedError('host credential expired; enroll the host again', 'expired');
      return err;
    }
    if (err instanceof TetherError && err.code === 'token-revoked') {
      if (host === undefined) return new StreamRefusedError('unknown host', 'unknown-host');
      if (host.state === 'revoked') return new StreamRefusedError('host revoked', 'revoked');
      // Superseded: the host acknowledged a newer credential (stored before the ack), so only a
      // stale copy of its data directory presents this one. It will never work again.
      const presented = decodeJwt(token).gen;
      if (typeof presented === 'number' && presented < host.minValidGeneration) {
        return new StreamRefusedError('host credential superseded by a newer one; is a stale copy of this host running?', 'revoked');
      }
      if (typeof presented === 'number' && presented > host.credentialGeneration) {
        // Signed by this control plane, in this epoch (a restore moves every generation past the
        // lost history's), yet newer than any the store recorded: a commit the host was answered
        // for is gone (a rotation stored before power loss under a store that was not
        // synchronous = FULL, or a database copied back by hand). Final: retrying cannot mend it.
        this.#logger.error(
          { hostId: subject, gen: presented, storeGen: host.credentialGeneration },
          'host credential generation is ahead of the store; refused for good, enroll the host again',
        );
        return new StreamRefusedError(
          `host credential generation ${presented} is ahead of the store's ${host.credentialGeneration}: the store lost a commit; enroll the host again`,
          'generation-ahead',
        );
      }
    }
    return err;
  }

  /** Exchanges a join token for the host's first credential, leased to this stream. */
  async #join(value: string, sessionId: string): Promise<StreamIdentity> {
    const { store, clock } = this.#options;
    const parsed = parseJoinToken(value);
    if (parsed === undefined) throw new UnauthenticatedError('malformed join token');
    const host = await store.getHost(parsed.hostId);
    if (host === undefined) throw new StreamRefusedError('unknown host', 'unknown-host');
    if (host.state === 'revoked') throw new StreamRefusedError('host revoked', 'revoked');
    if (host.joinSecretHash === null) throw new StreamRefusedError('join token already used', 'revoked');
    if (!joinSecretMatches(parsed.secret, host.joinSecretHash)) throw new StreamRefusedError('wrong join token', 'revoked');
    const nowMs = clock.now();
    if (nowMs >= host.joinExpiresAtMs) throw new StreamRefusedError('join token expired; enroll the host again', 'expired');
    const leased = await store.leaseJoinToken(parsed.hostId, sessionId, nowMs, (id) => this.#liveStreams.has(id));
    if (leased === undefined) throw new UnauthenticatedError('join token is in use by another stream');
    // A credential issued to an earlier, unacknowledged attempt is revoked: one join token, one live host.
    const joined = await this.#credentials.issueForJoin(leased, sessionId);
    // Revoked, or leased to another stream, since the lease (another control plane): a retry finds out which.
    if (joined === undefined) throw new UnauthenticatedError('the host changed while it joined; retry');
    const generation = joined.claims.generation;
    this.#options.verifier.forgetSubject('host', leased.hostId);
    this.#logger.info({ hostId: leased.hostId, jti: joined.claims.tokenId, kid: joined.claims.keyId, gen: generation }, 'host credential issued for join');
    return { hostId: leased.hostId, joined, generation };
  }

  async #onMessage(call: ServerDuplexStream<HostMessage, ControlMessage>, state: StreamState, message: HostMessage): Promise<void> {
    if (message.hello !== undefined) {
      if (state.session !== undefined) {
        this.#reject(state.session, 'hello', '', 'a second Hello');
        return;
      }
      const permit = this.#admission.tryAdmit();
      if (permit === undefined) {
        const retryAfterMs = this.#admission.retryAfterMs();
        this.#logger.debug({ hostId: state.identity.hostId, retryAfterMs, inFlight: this.#admission.inFlight }, 'Hello deferred');
        throw new HelloDeferredError(retryAfterMs);
      }
      try {
        await this.#onHello(call, state, message.hello);
      } finally {
        permit.release();
      }
      if (state.isEnded) {
        // Its session was released the moment the stream ended (see #onHello): nothing went into the dead stream.
        this.#logger.info({ hostId: state.identity.hostId, sessionId: state.sessionId }, 'host stream ended while its Hello was handled');
      }
      return;
    }
    const session = state.session;
    if (session === undefined) throw new InvalidArgumentError('the first envelope must be Hello');
    if (message.ack !== undefined) await this.#onAck(session, state, message.ack);
    else if (message.ackBatch !== undefined) {
      // In order, each as if it came alone (a Reject names the one refused).
      for (const ack of message.ackBatch.acks) {
        if (state.isEnded || session.state === 'closed') return;
        await this.#onAck(session, state, ack);
      }
    }
    else if (message.agentEvent !== undefined) await this.#options.agents.onAgentEvent(session, message.agentEvent);
    else if (message.ping !== undefined) session.send({ pong: { pingTimeMs: message.ping.timeMs, timeMs: this.#options.clock.now() } });
    else if (message.pong !== undefined) this.#onPong(session, state, message.pong);
    else if (message.drainRequest !== undefined) {
      // The host is the stream's authenticated identity: a host can only ever drain itself.
      this.#logger.warn({ hostId: session.hostId }, 'host asked to be drained (shutting down)');
      // Not awaited: the drain runs on its own while this stream goes on carrying the hand-overs.
      this.#options.drains.drain(session.hostId, 'host').catch((err: unknown) => this.#logger.error({ err, hostId: session.hostId }, 'drain asked by a host failed'));
    }
    else this.#reject(session, 'unknown', '', 'empty envelope');
  }

  /**
   * Registers the host's session and reconciles its agents. The session is the
   * stream's (`state.session`) from the moment it is registered, so a stream
   * that ends during the rest of the Hello (reconciling many agents takes a
   * while) releases it at once: it stops looking connected, and placements,
   * rotations and deliveries stop being sent into it.
   */
  async #onHello(call: ServerDuplexStream<HostMessage, ControlMessage>, state: StreamState, hello: Hello): Promise<void> {
    const { store, clock, sessions, events } = this.#options;
    if (hello.protocolVersion !== PROTOCOL_VERSION) {
      throw new InvalidArgumentError(`protocol version ${hello.protocolVersion} is not supported (this control plane speaks ${PROTOCOL_VERSION})`);
    }
    const { hostId, joined } = state.identity;
    const nowMs = clock.now();
    const host = await store.updateHost(
      hostId,
      {
        capacity: hello.capacity,
        labels: hello.labels.map((l): LabelRecord => ({ key: l.key, value: l.value })),
        lastSeenMs: nowMs,
      },
      // A revoke that landed since the stream was authenticated (here or in another control plane) stands.
      { states: ['enrolled', 'active'] },
    );
    if (host === undefined) {
      if ((await store.getHost(hostId)) === undefined) throw new NotFoundError(`no host ${hostId}`);
      throw new StreamRefusedError('host revoked', 'revoked');
    }
    // Gone already: register nothing (the host's next stream says Hello again).
    if (state.isEnded) return;
    const session = new HostSession({ hostId, sessionId: state.sessionId, hello, connectedAtMs: nowMs, call });
    state.session = session;
    const previous = sessions.add(session);
    previous?.close({ code: status.ABORTED, details: 'superseded by a newer stream from the same host', metadata: new Metadata() });
    session.send({
      welcome: {
        sessionId: state.sessionId,
        epoch: await store.epoch(),
        serverTimeMs: nowMs,
        heartbeatIntervalMs: this.#options.heartbeatIntervalMs,
        rotation: {
          agentTokenTtlMs: this.#options.agentTokenTtlMs,
          hostTokenTtlMs: this.#options.hostTokenTtlMs,
          clockToleranceMs: this.#options.clockToleranceMs,
          rotationWindowStart: ROTATION_WINDOW_START,
          rotationWindowWidth: ROTATION_WINDOW_WIDTH,
        },
        limits: { maxPayloadBytes: this.#options.maxPayloadBytes, deliveryWindow: this.#options.deliveryWindow },
        hostId,
        hostCredential: joined === undefined ? undefined : toCredential(joined),
        acceptsAckBatch: true,
        lostHostGraceMs: this.#options.lostHostGraceMs,
      },
    });
    this.#logger.info({ hostId, sessionId: state.sessionId, running: hello.running.length, version: hello.version }, 'host connected');
    events.emit('host-connected', { hostId, sessionId: state.sessionId, isReconnect: joined === undefined });
    await this.#options.agents.onHostConnected(session);
    session.forgetHelloReport();
    // Gone meanwhile: its release found nothing to unschedule, so nothing is scheduled for it.
    if (session.state === 'closed') return;
    state.ping = new PingDeadline(session, this.#driver);
    state.rotation = new RotationDeadline(session, state.identity.generation, this.#driver);
    this.#ping(state.ping);
    this.#driver.checkHostCredential(state.rotation);
  }

  async #onAck(session: HostSession, state: StreamState, ack: Ack): Promise<void> {
    if (ack.agentId === '') {
      if (ack.generation !== undefined && !ack.ok) {
        // The host could not store it and keeps what it holds: burn nothing, supersede nothing (a join can be retried).
        this.#logger.warn({ hostId: session.hostId, gen: ack.generation, error: ack.error }, 'host could not store its credential');
        return;
      }
      const joined = state.identity.joined;
      if (ack.generation !== undefined && joined !== undefined && ack.generation === joined.claims.generation) {
        // The host has stored its credential: burn the join token (unless the host was revoked meanwhile).
        const { isCompleted, host } = await this.#credentials.completeJoin(session.hostId, session.sessionId);
        if (!isCompleted) {
          this.#logger.warn({ hostId: session.hostId, gen: ack.generation, state: host?.state }, 'join not completed: the host changed since it joined');
          if (host === undefined || host.state === 'revoked') this.#endRevoked(session);
          return;
        }
        state.identity = { hostId: session.hostId, generation: ack.generation };
        this.#logger.info({ hostId: session.hostId, gen: ack.generation }, 'host credential acknowledged; join token burnt');
        return;
      }
      if (ack.generation === undefined) {
        this.#reject(session, 'ack', '', 'an Ack for a seq of no agent');
        return;
      }
      await this.#onHostCredentialAck(session, ack.generation);
      return;
    }
    if (ack.seq !== undefined) {
      // Delivery keeps a cursor only for agents placed on this very stream: that check is the assignment check.
      const refused = await this.#options.delivery.onAck(session, ack.agentId, ack.incarnation, ack.seq, ack.ok, ack.error);
      if (refused !== undefined) this.#reject(session, 'ack', ack.agentId, refused);
      return;
    }
    if (!(await this.#options.agents.onCredentialAck(session.hostId, ack.agentId, ack.incarnation, ack.generation ?? 0, ack.ok))) {
      this.#reject(session, 'ack', ack.agentId, 'agent not assigned to this host');
      return;
    }
    if (!ack.ok) this.#logger.warn({ hostId: session.hostId, agentId: ack.agentId, gen: ack.generation, error: ack.error }, 'host refused a credential');
  }

  /** The host stored a rotated credential: older ones are refused from now on. */
  async #onHostCredentialAck(session: HostSession, generation: number): Promise<void> {
    if (!(await this.#credentials.acknowledge(session.hostId, generation))) return;
    this.#options.verifier.forgetSubject('host', session.hostId);
    this.#logger.info({ hostId: session.hostId, gen: generation }, 'host credential acknowledged');
  }

  /**
   * Replaces the host's own credential once a third of its life has passed, for
   * as long as the stream lives: looks now, then again when it falls due (see
   * {@link Deadlines}). `deadline.held` starts as the generation the host opened
   * the stream with. When it is older than the newest one issued, a rotation
   * was lost with an earlier stream (sent, never stored): the host holds a
   * credential whose third passed when that rotation was made, so it gets a
   * fresh one now rather than when the lost one falls due.
   */
  async #checkHostCredential(deadline: RotationDeadline): Promise<void> {
    const { clock, store } = this.#options;
    const session = deadline.session;
    try {
      while (session.state !== 'closed') {
        const host = await store.getHost(session.hostId);
        if (host === undefined || host.state === 'revoked') return;
        const nowMs = clock.now();
        const dueAtMs = deadline.held < host.credentialGeneration ? nowMs : hostRotationDueAtMs(host.credentialIssuedAtMs, host.credentialExpiresAtMs);
        if (nowMs < dueAtMs) {
          // Closed during the read (its release unscheduled nothing): nothing is scheduled.
          if (isOpen(session)) this.#deadlines.set(deadline, dueAtMs);
          return;
        }
        const sent = await this.rotateHostCredential(session);
        if (sent === undefined) return;
        deadline.held = sent;
      }
    } catch (err) {
      this.#logger.error({ err, hostId: session.hostId }, 'host credential rotation failed');
    }
  }

  /**
   * Issues the host a fresh credential down its own stream; resolves with its
   * generation, or undefined if none was sent. `reason`: why (`due`, or
   * `key-revoked` when the key that signed the old one was revoked).
   */
  async rotateHostCredential(session: HostSession, reason: RotationReason = 'due'): Promise<number | undefined> {
    if (session.state === 'closed') return undefined;
    const issued = await this.#credentials.rotate(session.hostId);
    if (issued === undefined) return undefined;
    const { hostId } = session;
    const generation = issued.claims.generation;
    session.send({ tokenRotated: { agentId: '', credential: toCredential(issued) } });
    this.#logger.info({ hostId, jti: issued.claims.tokenId, kid: issued.claims.keyId, gen: generation, exp: issued.claims.expiresAtMs }, 'host credential rotated');
    this.#options.events.emit('credential-issued', {
      agentId: '',
      hostId,
      incarnation: 0,
      generation,
      tokenId: issued.claims.tokenId,
      expiresAtMs: issued.claims.expiresAtMs,
      rotationDueAtMs: hostRotationDueAtMs(issued.claims.issuedAtMs, issued.claims.expiresAtMs),
      reason,
    });
    return generation;
  }

  /** App-level pings (data on an otherwise idle stream, and the host's clock skew): sends one, and schedules the next. */
  #ping(deadline: PingDeadline): void {
    const { session, sentAtMs } = deadline;
    if (session.state === 'closed') return;
    const nowMs = this.#options.clock.now();
    // Unanswered pings are forgotten after a few rounds so the list stays small.
    if (sentAtMs.length > 8) sentAtMs.length = 0;
    if (!sentAtMs.includes(nowMs)) sentAtMs.push(nowMs);
    session.send({ ping: { timeMs: nowMs } });
    this.#deadlines.set(deadline, nowMs + this.#options.pingIntervalMs);
  }

  /** Revokes a host: its credential is refused from now on and its stream ends with a final refusal. */
  async revoke(hostId: string): Promise<void> {
    const host = await this.#options.store.updateHost(hostId, { state: 'revoked', joinSecretHash: null, joinLeaseSessionId: null });
    if (host === undefined) throw new NotFoundError(`no host ${hostId}`);
    this.#options.verifier.forgetSubject('host', hostId);
    const session = this.#options.sessions.get(hostId);
    if (session !== undefined) this.#endRevoked(session);
    this.#logger.warn({ hostId }, 'host revoked');
  }

  /** Ends a revoked host's stream with the final refusal. */
  #endRevoked(session: HostSession): void {
    const metadata = new Metadata();
    metadata.set(REFUSAL_METADATA_KEY, 'revoked');
    session.close({ code: status.UNAUTHENTICATED, details: 'host revoked', metadata });
  }

  #onPong(session: HostSession, state: StreamState, pong: Pong): void {
    const sent = state.ping?.sentAtMs;
    const index = sent === undefined ? -1 : sent.indexOf(pong.pingTimeMs);
    if (sent === undefined || index < 0) return;
    const sentAtMs = sent[index] as number;
    sent.splice(index, 1);
    const nowMs = this.#options.clock.now();
    session.clockSkewMs = Math.round(pong.timeMs - (sentAtMs + nowMs) / 2);
    this.#options.events.emit('clock-skew', { hostId: session.hostId, skewMs: session.clockSkewMs });
  }

  #reject(session: HostSession, what: string, agentId: string, reason: string): void {
    session.violations++;
    session.send({ reject: { what, agentId, reason } });
    this.#logger.warn({ hostId: session.hostId, what, agentId, reason, violations: session.violations }, 'envelope rejected');
    this.#options.events.emit('reject', { hostId: session.hostId, what, agentId, reason });
    if (session.violations > this.#options.violationBudget) {
      this.#logger.warn({ hostId: session.hostId }, 'violation budget spent; ending the stream');
      session.close({ code: status.FAILED_PRECONDITION, details: 'too many protocol violations', metadata: new Metadata() });
    }
  }

  /** Answers an envelope-level violation with Reject; the stream goes on. */
  reject(session: HostSession, what: string, agentId: string, reason: string): void {
    this.#reject(session, what, agentId, reason);
  }

  /** Hosts for ListHosts, with their live state. */
  async listHosts(
    afterId: string | null,
    limit: number,
  ): Promise<{ hosts: (HostRecord & { isConnected: boolean; agents: number; clockSkewMs: number; drainState: string })[]; nextAfterId: string | null }> {
    const page = await this.#options.store.listHosts(afterId, limit);
    // The page's own loads (kept by the store), not a count over every agent.
    const loads = await this.#options.store.getHostLoads(page.items.map((host) => host.hostId));
    const drains = await this.#options.drains.states();
    return {
      hosts: page.items.map((host) => {
        const session = this.#options.sessions.get(host.hostId);
        return {
          ...host,
          isConnected: session !== undefined,
          agents: loads.get(host.hostId)?.load ?? 0,
          clockSkewMs: session?.clockSkewMs ?? 0,
          drainState: drains.get(host.hostId) ?? '',
        };
      }),
      nextAfterId: page.nextAfterId,
    };
  }

  /** Ends every stream (shutdown). */
  closeAll(): void {
    for (const session of this.#options.sessions.all()) {
      session.close({ code: status.UNAVAILABLE, details: 'control plane shutting down', metadata: new Metadata() } satisfies Partial<StatusObject>);
    }
    this.#deadlines.clear();
  }
}
