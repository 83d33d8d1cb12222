import { randomInt } from 'node:crypto';
import { createServer, type Server as HttpServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import type * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import type { Registry } from 'prom-client';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import type { Clock } from '../common/clock.js';
import { InvalidArgumentError } from '../common/errors.js';
import { WatchedCertificates } from '../common/watched-certificates.js';
import type { Logger } from '../common/logger.js';
import { isLoopback, splitHostPort } from '../common/loopback.js';
import { answerMetrics, listen } from '../common/metrics-http.js';
import { HOST_MAX_RECEIVE_MESSAGE_BYTES, MAX_PAYLOAD_BYTES_CEILING } from '../common/protocol.js';
import { AdminServiceService } from '../gen/tether/v1/admin.js';
import { AgentServiceService } from '../gen/tether/v1/agent.js';
import { HostServiceService, type HostServiceServer } from '../gen/tether/v1/host.js';
import { AgentManager } from './agents/agent-manager.js';
import { AdminTokens } from './auth/admin-tokens.js';
import { Authenticator } from './auth/authenticator.js';
import { AUDIT_DEFAULTS, AuditLog } from './audit/audit-log.js';
import { RefusalLog } from './auth/refusal-log.js';
import { DeliveryManager } from './delivery/delivery-manager.js';
import { ControlPlaneEvents } from './events.js';
import { EventLog } from './event-log/event-log.js';
import { EventRecorder } from './event-log/event-recorder.js';
import { EventWatchers } from './event-log/event-watchers.js';
import { createMetrics } from './metrics.js';
import { HealthService } from './grpc/health-service.js';
import { HostService, type ConnectLimits } from './hosts/host-service.js';
import { HostSessions } from './hosts/host-session.js';
import { HostDrains } from './hosts/host-drain.js';
import { LostHostDetector } from './hosts/lost-host-detector.js';
import { adminService } from './services/admin-service.js';
import { agentService } from './services/agent-service.js';
import { HeartbeatLedger } from './services/heartbeat-ledger.js';
import type { AdminTokenStore } from './store/admin-token-store.js';
import type { AuditStore } from './store/audit-store.js';
import type { Store } from './store/store.js';
import type { EventStore } from './store/event-store.js';
import { MemoryEventStore } from './store/memory-event-store.js';
import { KeyRevoker } from './tokens/key-revoker.js';
import { AUDIENCE_KEY_PURPOSE, FEDERATION_ALGORITHM, JWKS_MAX_AGE_MS, MAX_FEDERATION_KEYS, SigningKeyRing } from './tokens/signing-keys.js';
import { discoveryDocument, federationPaths, parseIssuerUrl } from './tokens/discovery.js';
import { TokenIssuer } from './tokens/token-issuer.js';
import { TokenVerifier, verifierCacheSize } from './tokens/token-verifier.js';

/** The FileDescriptorSet `buf build` makes of proto/ (committed, checked for freshness in CI). */
/** A refused agent or host credential is logged once per principal (its claimed `sub`) in this long. */
const REFUSAL_LOG_WINDOW_MS = 60_000;
/** Principals the refusal log remembers at most: the `sub` is unverified, so a caller could name millions. */
const REFUSAL_LOG_MAX_PRINCIPALS = 4_096;
/** Refusal lines per window at most, over all principals; the rest are counted (and always in the metric). */
const REFUSAL_LOG_MAX_LINES = 32;
const DESCRIPTORS_PATH = fileURLToPath(new URL('../gen/descriptors.binpb', import.meta.url));

/**
 * What server reflection serves: the real descriptors buf compiled, file by file,
 * rather than proto-loader's (which merges files per package and names types in
 * ways strict clients such as buf curl and grpcurl cannot resolve). The
 * reflection service reads only `fileDescriptorProtos` from its package definition.
 */
function reflectedDescriptors(): protoLoader.PackageDefinition {
  const set = fromBinary(FileDescriptorSetSchema, readFileSync(DESCRIPTORS_PATH));
  const fileDescriptorProtos = set.file.map((file) => Buffer.from(toBinary(FileDescriptorProtoSchema, file)));
  return { 'tether.descriptors': { format: 'Protocol Buffer 3 DescriptorProto', type: {}, fileDescriptorProtos } } as unknown as protoLoader.PackageDefinition;
}

/** Options of {@link ControlPlane}; all but the first four have defaults. */
export interface ControlPlaneOptions {
  store: Store;
  clock: Clock;
  logger: Logger;
  /** The bootstrap admin token (from the environment or a file, never argv): an admin with the id `bootstrap`. */
  adminToken: string;
  /** Where admin tokens added through AdminService are kept. Default: `store`, which must implement it (SqliteStore and PostgresStore do). */
  adminTokenStore?: AdminTokenStore;
  /** Where the audit log is kept. Default: `store`, which must implement it (SqliteStore and PostgresStore do). */
  auditStore?: AuditStore;
  /** Audit records older than this are pruned. Default 90 days. */
  auditMaxAgeMs?: number;
  /** Audit records beyond the newest this many are pruned. Default 1,000,000. */
  auditMaxRecords?: number;
  /** gRPC listen address, `host:port`; port 0 picks one. Default `127.0.0.1:7443`. */
  address?: string;
  /** HTTP listen address for `/.well-known/jwks.json`; undefined: none. */
  httpAddress?: string;
  /** PEM certificate and key: serve TLS. */
  tls?: { certPem: Buffer; keyPem: Buffer };
  /**
   * PEM certificate and key files: serve TLS, and read the files again every
   * `pollIntervalMs` (on `clock`; default 10 s) so new connections get a
   * replaced certificate without a restart; a pair that does not check out is
   * not taken (see {@link WatchedCertificates}). Instead of `tls`.
   */
  tlsFiles?: { certFile: string; keyFile: string; pollIntervalMs?: number };
  /** Allow plaintext on a non-loopback address. */
  isInsecureAllowed?: boolean;
  issuer?: string;
  audience?: string;
  /**
   * Federation: the `iss` of audience tokens, an HTTPS URL (plain HTTP only on
   * loopback), which then are signed ES256 by their own keys; the HTTP listener
   * serves the OpenID discovery document and the federation JWKS under it.
   */
  issuerUrl?: string;
  /** The most keys the federation JWKS holds; from 3 to {@link MAX_FEDERATION_KEYS} (the default). */
  maxFederationKeys?: number;
  agentTokenTtlMs?: number;
  /** Lifetime of tokens minted for other audiences (MintToken); never past the agent token's `exp`. Default 5 min. */
  audienceTokenTtlMs?: number;
  hostTokenTtlMs?: number;
  joinTokenTtlMs?: number;
  clockToleranceMs?: number;
  heartbeatIntervalMs?: number;
  isRotationEnabled?: boolean;
  /**
   * Cap on agent-credential signing rate. Default `auto`: sized from the agents
   * scheduled, 2 × agents / (0.55 × agent TTL), at least 200/s. A number is
   * honoured, and a warning logged while it is below that need.
   */
  maxRotationsPerSecond?: number | 'auto';
  /**
   * Scheduled rotations running at once at most. Default 128: their store
   * writes share a commit (one fsync) instead of one each, so 100,000 agents
   * at a 30 s TTL (about 12,000 rotations/s) are kept up with even at 10 ms a
   * commit, while the work one commit releases at once (and so the event-loop
   * delay, a few ms) stays small. 1 runs them one after the other.
   */
  maxConcurrentRotations?: number;
  /** Uniform in [0, 1): rotation jitter. */
  random?: () => number;
  /** App-level Ping/Pong towards each host. Default 30 s. */
  pingIntervalMs?: number;
  /** Envelope-level violations a host stream may commit before it is ended. Default 100. */
  violationBudget?: number;
  /**
   * Limits on Connect attempts: failures per source address (window 10 s, 20 per
   * source, 500 in all, 10,000 sources tracked) and streams held before they are
   * verified (8 per connection, 1,024 in all).
   */
  connectLimits?: ConnectLimits;
  /**
   * Hellos processed at once at most (default 32): past it a host is told to
   * retry later (RESOURCE_EXHAUSTED and a retry-after), so a control plane
   * coming back to every host at once is not flattened.
   */
  maxConcurrentHellos?: number;
  /** The unit of a deferred Hello's retry-after: `unit` plus up to `unit` per round of excess. Default 1 s. */
  helloRetryUnitMs?: number;
  /** Keepalive ping interval towards hosts. Production: no faster than 30 s. */
  keepaliveTimeMs?: number;
  keepaliveTimeoutMs?: number;
  /**
   * Streams one client connection may have open at once (a host's carries its
   * Connect stream and its agents' calls). Default 1,000. A refused Connect
   * stream is reset once answered (grpc-js alone would keep it, half-closed,
   * until the client ended it), and Connect streams not yet verified are
   * bounded on their own (`connectLimits`).
   */
  maxConcurrentStreams?: number;
  /** Largest payload accepted. Default 1 MiB; at most {@link MAX_PAYLOAD_BYTES_CEILING}, so a Deliver always fits a host's receive limit. */
  maxPayloadBytes?: number;
  /** Unacknowledged deliveries per agent. Default 32. */
  deliveryWindow?: number;
  /** Refusals after which a message is dead-lettered. Default 5. */
  maxDeliveryAttempts?: number;
  /** Unacknowledged messages per agent before sends get RESOURCE_EXHAUSTED. Default 10,000. */
  maxOutboxMessages?: number;
  /**
   * Payload bytes of unacknowledged (and dead-lettered) messages per agent
   * before sends get RESOURCE_EXHAUSTED. Default 64 MiB; from 64 KiB to 1 TiB,
   * and at least `maxPayloadBytes`, so one largest message always fits an empty outbox.
   */
  maxOutboxBytes?: number;
  redeliveryMinDelayMs?: number;
  redeliveryMaxDelayMs?: number;
  /** How long acknowledged messages (and so idempotency keys) are kept. Default 24 h. */
  ackedRetentionMs?: number;
  /** How long messages of stopped agents are kept. Default 7 days. */
  endedRetentionMs?: number;
  /**
   * Bytes buffered for one host's stream (queued, or written and not yet
   * flushed) before deliveries to it wait: what a slow host can make the control
   * plane hold. Default 16 MiB; from 64 KiB to 1 GiB. One delivery always goes
   * when nothing is buffered, whatever its size.
   */
  maxBufferedBytesPerHost?: number;
  /** Payload bytes kept read ahead of deliveries, all agents together. Default 64 MiB; from 64 KiB to 1 GiB. */
  maxReadAheadBytes?: number;
  /**
   * Time without contact after which a host is lost: its agents become `lost`,
   * and those made by `ensure` are fenced and started elsewhere once their old
   * tokens have expired. Counted from its last contact or from this control
   * plane's start, whichever is later. Default and least: a third of the agent
   * token TTL plus the clock tolerance. Hosts fence themselves a margin before it.
   */
  lostHostGraceMs?: number;
  /** Hosts declared lost per sweep at most (a sweep every grace/20, from 1 s to 30 s). Default 16. */
  maxLostHostsPerSweep?: number;
  /**
   * Where lifecycle events (WatchEvents) are kept. Default: `store` itself when
   * it has the events part (SqliteStore and PostgresStore do), else memory (lost at a restart).
   */
  eventStore?: EventStore;
  /** Events older than this are pruned. Default 7 days. */
  eventRetentionMs?: number;
  /** Events past the newest this many are pruned. Default 100,000. */
  eventRetentionCount?: number;
  /** Events one WatchEvents watcher may have waiting (it does not read) before it is cut. Default 4,096. */
  maxEventsQueuedPerWatcher?: number;
  /**
   * How long `close()` lets calls in flight finish, on the injected clock, after
   * health turns NOT_SERVING and new streams are refused; what is still open
   * then is cut. 0 cuts at once. Default 10 s.
   */
  shutdownGraceMs?: number;
}

/** Whether `store` also keeps events (SqliteStore, PostgresStore, or a fake of the Store around one). */
function isEventStore(store: Store): store is Store & EventStore {
  const candidate = store as Partial<EventStore>;
  return typeof candidate.appendEvents === 'function' && typeof candidate.listEvents === 'function' && typeof candidate.eventIdRange === 'function' && typeof candidate.pruneEvents === 'function';
}

/** `value` (or `fallback`) checked to lie within the bounds of a byte-count option. */
function byteBound(value: number | undefined, fallback: number, name: string): number {
  const bytes = value ?? fallback;
  if (!Number.isSafeInteger(bytes) || bytes < 64 * 1024 || bytes > 1024 * 1024 * 1024) {
    throw new InvalidArgumentError(`${name} must be a whole number of bytes from 64 KiB to 1 GiB`);
  }
  return bytes;
}

/** `store` as the interface whose `methods` it has, or an error naming what is missing. */
function storePart<T>(store: object, what: string, methods: readonly string[]): T {
  const missing = methods.filter((m) => typeof (store as Record<string, unknown>)[m] !== 'function');
  if (missing.length > 0) throw new InvalidArgumentError(`the store is no ${what} (it lacks ${missing.join(', ')}): give one in the options`);
  return store as T;
}

/** The least lost-host grace: a third of the agent token TTL plus the clock tolerance. */
export function minLostHostGraceMs(agentTokenTtlMs: number, clockToleranceMs: number): number {
  return Math.ceil(agentTokenTtlMs / 3) + clockToleranceMs;
}

/**
 * The lost-host grace (default: the least), refused when shorter than the
 * least: a partition the promise covers must never cost an agent its place.
 */
function lostHostGrace(value: number | undefined, agentTokenTtlMs: number, clockToleranceMs: number): number {
  const minMs = minLostHostGraceMs(agentTokenTtlMs, clockToleranceMs);
  const graceMs = value ?? minMs;
  if (!Number.isSafeInteger(graceMs) || graceMs < minMs) {
    throw new InvalidArgumentError(
      `--lost-host-grace (${graceMs} ms) must be at least a third of --agent-token-ttl plus --clock-tolerance (${minMs} ms): a partition shorter than that must never cost an agent its place`,
    );
  }
  return graceMs;
}

/** The smallest and largest byte cap of one outbox. */
export const MAX_OUTBOX_BYTES_BOUNDS = { min: 64 * 1024, max: 1024 ** 4 } as const;

/** The byte cap of one outbox (default 64 MiB), checked against its bounds and the largest payload. */
function outboxBytesBound(value: number | undefined, maxPayloadBytes: number): number {
  const bytes = value ?? 64 * 1024 * 1024;
  const { min, max } = MAX_OUTBOX_BYTES_BOUNDS;
  if (!Number.isSafeInteger(bytes) || bytes < min || bytes > max) {
    throw new InvalidArgumentError(`maxOutboxBytes must be a whole number of bytes from ${min} to ${max}, got ${bytes}`);
  }
  if (bytes < maxPayloadBytes) {
    throw new InvalidArgumentError(`maxOutboxBytes (${bytes}) must be at least maxPayloadBytes (${maxPayloadBytes}): a largest message must fit an empty outbox`);
  }
  return bytes;
}

/**
 * A running control plane: gRPC (HostService, AgentService, AdminService,
 * Health, reflection) and, optionally, HTTP for the JWKS. Build with
 * {@link ControlPlane.start}; `close()` stops it.
 */
export class ControlPlane {
  /** What happens, as it happens (for observers and tests). */
  readonly events: ControlPlaneEvents;
  /** The bound gRPC port. */
  readonly port: number;
  /** The bound HTTP port (0 when there is no HTTP listener). */
  readonly httpPort: number;
  readonly #server: grpc.Server;
  readonly #http: HttpServer | undefined;
  readonly #agents: AgentManager;
  readonly #hosts: HostService;
  readonly #delivery: DeliveryManager;
  readonly #sessions: HostSessions;
  readonly #verifier: TokenVerifier;
  readonly #issuer: TokenIssuer;
  readonly #keys: SigningKeyRing;
  readonly #federationKeys: SigningKeyRing | undefined;
  readonly #logger: Logger;
  readonly #metrics: { registry: Registry; close: () => void };
  readonly #heartbeats: HeartbeatLedger;
  readonly #health: HealthService;
  readonly #clock: Clock;
  readonly #shutdownGraceMs: number;
  readonly #lostHosts: LostHostDetector;
  readonly #drains: HostDrains;
  /** The TLS files served and watched (`tlsFiles`), closed last. */
  readonly #certificates: WatchedCertificates | undefined;
  readonly #audit: AuditLog;
  readonly #eventLog: EventLog;
  readonly #eventRecorder: EventRecorder;
  readonly #watchers: EventWatchers;
  #closing: Promise<void> | undefined;

  private constructor(parts: {
    events: ControlPlaneEvents;
    port: number;
    httpPort: number;
    server: grpc.Server;
    http: HttpServer | undefined;
    agents: AgentManager;
    hosts: HostService;
    delivery: DeliveryManager;
    sessions: HostSessions;
    verifier: TokenVerifier;
    issuer: TokenIssuer;
    keys: SigningKeyRing;
    federationKeys: SigningKeyRing | undefined;
    logger: Logger;
    metrics: { registry: Registry; close: () => void };
    heartbeats: HeartbeatLedger;
    health: HealthService;
    clock: Clock;
    shutdownGraceMs: number;
    lostHosts: LostHostDetector;
    drains: HostDrains;
    certificates: WatchedCertificates | undefined;
    audit: AuditLog;
    eventLog: EventLog;
    eventRecorder: EventRecorder;
    watchers: EventWatchers;
  }) {
    this.events = parts.events;
    this.port = parts.port;
    this.httpPort = parts.httpPort;
    this.#server = parts.server;
    this.#http = parts.http;
    this.#agents = parts.agents;
    this.#hosts = parts.hosts;
    this.#delivery = parts.delivery;
    this.#sessions = parts.sessions;
    this.#verifier = parts.verifier;
    this.#issuer = parts.issuer;
    this.#keys = parts.keys;
    this.#federationKeys = parts.federationKeys;
    this.#logger = parts.logger;
    this.#metrics = parts.metrics;
    this.#heartbeats = parts.heartbeats;
    this.#health = parts.health;
    this.#clock = parts.clock;
    this.#shutdownGraceMs = parts.shutdownGraceMs;
    this.#lostHosts = parts.lostHosts;
    this.#drains = parts.drains;
    this.#certificates = parts.certificates;
    this.#audit = parts.audit;
    this.#eventLog = parts.eventLog;
    this.#eventRecorder = parts.eventRecorder;
    this.#watchers = parts.watchers;
  }

  /** The Prometheus registry of this control plane (also served at HTTP `/metrics`). */
  get metrics(): Registry {
    return this.#metrics.registry;
  }

  /** Loads keys, binds the listeners and starts serving. */
  static async start(options: ControlPlaneOptions): Promise<ControlPlane> {
    const { store, clock } = options;
    // Components derive their own `component` child from the root logger; this one is for the control plane's own lines.
    const root = options.logger;
    const logger = root.child({ component: 'control-plane' });
    const address = options.address ?? '127.0.0.1:7443';
    const { host } = splitHostPort(address);
    if (options.tls !== undefined && options.tlsFiles !== undefined) throw new InvalidArgumentError('give tls or tlsFiles, not both');
    if (options.tls === undefined && options.tlsFiles === undefined && !isLoopback(host) && options.isInsecureAllowed !== true) {
      throw new InvalidArgumentError(`refusing plaintext on ${host}: give a TLS certificate and key, or --insecure`);
    }
    const issuerName = options.issuer ?? 'tether-control-plane';
    const audience = options.audience ?? 'tether:control-plane';
    const agentTokenTtlMs = options.agentTokenTtlMs ?? 3_600_000;
    const audienceTokenTtlMs = options.audienceTokenTtlMs ?? 300_000;
    if (!Number.isFinite(audienceTokenTtlMs) || audienceTokenTtlMs < 1_000) throw new InvalidArgumentError('audienceTokenTtlMs must be at least 1 s');
    const hostTokenTtlMs = options.hostTokenTtlMs ?? 72 * 3_600_000;
    const clockToleranceMs = options.clockToleranceMs ?? 30_000;
    const heartbeatIntervalMs = options.heartbeatIntervalMs ?? 30_000;
    const maxPayloadBytes = options.maxPayloadBytes ?? 1024 * 1024;
    if (!Number.isSafeInteger(maxPayloadBytes) || maxPayloadBytes < 1 || maxPayloadBytes > MAX_PAYLOAD_BYTES_CEILING) {
      throw new InvalidArgumentError(`maxPayloadBytes must be from 1 to ${MAX_PAYLOAD_BYTES_CEILING} (a host receives at most ${HOST_MAX_RECEIVE_MESSAGE_BYTES} bytes per envelope), got ${maxPayloadBytes}`);
    }
    const deliveryWindow = options.deliveryWindow ?? 32;
    const maxRotationsPerSecond = options.maxRotationsPerSecond ?? 'auto';
    if (maxRotationsPerSecond !== 'auto' && !(maxRotationsPerSecond > 0)) throw new InvalidArgumentError(`maxRotationsPerSecond must be more than 0 or "auto", got ${maxRotationsPerSecond}`);
    const random = options.random ?? ((): number => randomInt(0, 2 ** 32) / 2 ** 32);
    const shutdownGraceMs = options.shutdownGraceMs ?? 10_000;
    const lostHostGraceMs = lostHostGrace(options.lostHostGraceMs, agentTokenTtlMs, clockToleranceMs);
    const maxLostHostsPerSweep = options.maxLostHostsPerSweep ?? 16;
    if (!Number.isSafeInteger(maxLostHostsPerSweep) || maxLostHostsPerSweep < 1) throw new InvalidArgumentError(`maxLostHostsPerSweep must be a whole number of 1 or more, got ${maxLostHostsPerSweep}`);
    if (!Number.isFinite(shutdownGraceMs) || shutdownGraceMs < 0) throw new InvalidArgumentError(`shutdownGraceMs must be 0 or more, got ${shutdownGraceMs}`);

    const events = new ControlPlaneEvents();
    const eventRetentionMs = options.eventRetentionMs ?? 7 * 24 * 3_600_000;
    const eventRetentionCount = options.eventRetentionCount ?? 100_000;
    if (!Number.isSafeInteger(eventRetentionMs) || eventRetentionMs < 60_000) throw new InvalidArgumentError(`eventRetentionMs must be at least 1 min, got ${eventRetentionMs}`);
    if (!Number.isSafeInteger(eventRetentionCount) || eventRetentionCount < 1) throw new InvalidArgumentError(`eventRetentionCount must be a whole number of 1 or more, got ${eventRetentionCount}`);
    const maxEventsQueuedPerWatcher = options.maxEventsQueuedPerWatcher;
    if (maxEventsQueuedPerWatcher !== undefined && (!Number.isSafeInteger(maxEventsQueuedPerWatcher) || maxEventsQueuedPerWatcher < 1)) {
      throw new InvalidArgumentError(`maxEventsQueuedPerWatcher must be a whole number of 1 or more, got ${maxEventsQueuedPerWatcher}`);
    }
    const eventStore = options.eventStore ?? (isEventStore(store) ? store : undefined);
    if (eventStore === undefined) logger.warn('the store keeps no events: they are kept in memory and lost at a restart');
    const eventLog = await EventLog.open({
      store: eventStore ?? new MemoryEventStore(),
      clock,
      logger: root,
      retentionMs: eventRetentionMs,
      retentionCount: eventRetentionCount,
      // Often enough that the count bound holds within a few thousand events at a high rotation rate.
      pruneIntervalMs: Math.min(60_000, Math.max(1_000, Math.floor(eventRetentionMs / 100))),
    });
    const eventRecorder = new EventRecorder(events, eventLog);
    const watchers = new EventWatchers({
      log: eventLog,
      logger: root,
      ...(maxEventsQueuedPerWatcher === undefined ? {} : { maxQueuedPerWatcher: maxEventsQueuedPerWatcher }),
      onCut: (queued) => void events.emit('event-watcher-cut', { queued }),
    });
    const onKeyChange = (change: { kid: string; purpose: string; change: 'rotated' | 'revoked'; detail: string }): void => void events.emit('signing-key', change);
    // The longest any token lives, plus the tolerance: how long a retired key keeps verifying.
    const maxTokenLifetimeMs = Math.max(agentTokenTtlMs, hostTokenTtlMs) + clockToleranceMs;
    const keys = await SigningKeyRing.load({ store, clock, logger: root.child({ component: 'keys' }), maxTokenLifetimeMs, onKeyChange });
    const issuerUrl = options.issuerUrl === undefined ? undefined : parseIssuerUrl(options.issuerUrl);
    const maxFederationKeys = options.maxFederationKeys ?? MAX_FEDERATION_KEYS;
    if (!Number.isSafeInteger(maxFederationKeys) || maxFederationKeys < 3 || maxFederationKeys > MAX_FEDERATION_KEYS) {
      throw new InvalidArgumentError(`maxFederationKeys must be a whole number from 3 to ${MAX_FEDERATION_KEYS}, got ${maxFederationKeys}`);
    }
    // Loaded after the own keys, which fix the verify-until of keys older than key states (all of them own keys).
    const federationKeys =
      issuerUrl === undefined
        ? undefined
        : await SigningKeyRing.load({
            store,
            clock,
            logger: root.child({ component: 'keys' }),
            purpose: AUDIENCE_KEY_PURPOSE,
            algorithm: FEDERATION_ALGORITHM,
            maxPublishedKeys: maxFederationKeys,
            // An audience token never outlives the agent token it was minted with.
            maxTokenLifetimeMs: agentTokenTtlMs + clockToleranceMs,
            onKeyChange,
          });
    const federation = federationKeys === undefined || issuerUrl === undefined ? undefined : { keys: federationKeys, issuer: issuerUrl.issuer };
    const issuer = new TokenIssuer({ keys, clock, issuer: issuerName, audience, ...(federation === undefined ? {} : { federation }) });
    const sessions = new HostSessions();
    const heartbeats = new HeartbeatLedger();
    // The verifier consults agents and hosts on a cache miss; they are built below (and before any call can arrive).
    const verifier: TokenVerifier = new TokenVerifier({
      keys,
      clock,
      issuer: issuerName,
      audience,
      clockToleranceMs,
      ...(federation === undefined ? {} : { federation }),
      // Live tokens: of the agents scheduled for rotation (live, host connected) and of the connected hosts.
      cacheSize: () => verifierCacheSize(agents.scheduledAgents, sessions.size),
      isRevoked: async (claims): Promise<boolean> => {
        if (claims.kind === 'agent') return agents.isAgentTokenRevoked(claims);
        if (claims.kind === 'host') return hosts.isHostTokenRevoked(claims);
        return false;
      },
    });
    const adminTokens = new AdminTokens({
      store: options.adminTokenStore ?? storePart<AdminTokenStore>(store, 'AdminTokenStore', ['insertAdminToken', 'getAdminToken', 'listAdminTokens', 'retireAdminToken']),
      bootstrapToken: options.adminToken,
      clock,
    });
    const audit = new AuditLog({
      store: options.auditStore ?? storePart<AuditStore>(store, 'AuditStore', ['appendAudit', 'listAudit', 'pruneAudit']),
      clock,
      logger: root,
      maxAgeMs: options.auditMaxAgeMs ?? AUDIT_DEFAULTS.maxAgeMs,
      maxRecords: options.auditMaxRecords ?? AUDIT_DEFAULTS.maxRecords,
    });
    const authenticator = new Authenticator({
      verifier,
      adminTokens,
      onFailure: (principal, reason) => events.emit('auth-failure', { principal, reason }),
      onAgentVerified: (claims) => {
        if (events.listenerCount('agent-verified') > 0) {
          events.emit('agent-verified', { agentId: claims.subject, hostId: claims.hostId, incarnation: claims.incarnation, generation: claims.generation, tokenId: claims.tokenId, atMs: clock.now(), expiresAtMs: claims.expiresAtMs });
        }
      },
      refusals: new RefusalLog({ clock, logger: root.child({ component: 'auth' }), windowMs: REFUSAL_LOG_WINDOW_MS, maxPrincipals: REFUSAL_LOG_MAX_PRINCIPALS, maxLinesPerWindow: REFUSAL_LOG_MAX_LINES }),
    });
    const delivery = new DeliveryManager({
      store,
      clock,
      logger: root,
      events,
      rotate: async (agentId) => {
        await agents.rotate(agentId, 'delivery');
      },
      window: deliveryWindow,
      maxAttempts: options.maxDeliveryAttempts ?? 5,
      maxPending: options.maxOutboxMessages ?? 10_000,
      maxPendingBytes: outboxBytesBound(options.maxOutboxBytes, maxPayloadBytes),
      maxPayloadBytes,
      maxBatch: 1000,
      retryMinDelayMs: options.redeliveryMinDelayMs ?? 1_000,
      retryMaxDelayMs: options.redeliveryMaxDelayMs ?? 60_000,
      maxQueuedPerHost: 4096,
      maxBufferedBytesPerHost: byteBound(options.maxBufferedBytesPerHost, 16 * 1024 * 1024, 'maxBufferedBytesPerHost'),
      maxReadAheadBytes: byteBound(options.maxReadAheadBytes, 64 * 1024 * 1024, 'maxReadAheadBytes'),
      ackedRetentionMs: options.ackedRetentionMs ?? 24 * 3_600_000,
      endedRetentionMs: options.endedRetentionMs ?? 7 * 24 * 3_600_000,
    });
    const agents: AgentManager = new AgentManager({
      store,
      issuer,
      verifier,
      sessions,
      clock,
      logger: root,
      events,
      agentTokenTtlMs,
      clockToleranceMs,
      isRotationEnabled: options.isRotationEnabled ?? true,
      maxRotationsPerSecond,
      maxConcurrentRotations: options.maxConcurrentRotations ?? 128,
      random,
      reject: (session, what, agentId, reason) => hosts.reject(session, what, agentId, reason),
      delivery,
      heartbeats,
    });
    const drains = new HostDrains({ store, agents, sessions, clock, logger: root, events });
    const hosts: HostService = new HostService({
      drains,
      store,
      issuer,
      verifier,
      authenticator,
      agents,
      delivery,
      sessions,
      clock,
      logger: root,
      events,
      hostTokenTtlMs,
      agentTokenTtlMs,
      clockToleranceMs,
      lostHostGraceMs,
      heartbeatIntervalMs,
      joinTokenTtlMs: options.joinTokenTtlMs ?? 3_600_000,
      maxPayloadBytes,
      deliveryWindow,
      pingIntervalMs: options.pingIntervalMs ?? 30_000,
      violationBudget: options.violationBudget ?? 100,
      ...(options.connectLimits === undefined ? {} : { connectLimits: options.connectLimits }),
      ...(options.maxConcurrentHellos === undefined ? {} : { maxConcurrentHellos: options.maxConcurrentHellos }),
      ...(options.helloRetryUnitMs === undefined ? {} : { helloRetryUnitMs: options.helloRetryUnitMs }),
      random,
    });

    const lostHosts = new LostHostDetector({
      store,
      sessions,
      clock,
      logger: root,
      events,
      graceMs: lostHostGraceMs,
      sweepIntervalMs: Math.min(30_000, Math.max(1_000, Math.floor(lostHostGraceMs / 20))),
      maxLostPerSweep: maxLostHostsPerSweep,
      onLost: async (hostId, silentForMs) => {
        await agents.onHostLost(hostId, silentForMs);
      },
    });

    const keyRevoker = new KeyRevoker({
      keys,
      ...(federationKeys === undefined ? {} : { federationKeys }),
      verifier,
      store,
      clock,
      logger: root,
      maxRotationsPerSecond: () => agents.maxRotationsPerSecond,
      isHostConnected: (hostId) => sessions.get(hostId) !== undefined,
      resignHost: async (hostId) => {
        const session = sessions.get(hostId);
        return session !== undefined && (await hosts.rotateHostCredential(session, 'key-revoked')) !== undefined;
      },
      scheduleRotation: (agentId, dueAtMs, expiresAtMs) => agents.scheduleRotation(agentId, dueAtMs, expiresAtMs, 'key-revoked'),
    });

    const keepaliveTimeMs = options.keepaliveTimeMs ?? 30_000;
    const server = new grpc.Server({
      'grpc.keepalive_time_ms': keepaliveTimeMs,
      'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs ?? 10_000,
      'grpc.keepalive_permit_without_calls': 1,
      // Hosts ping no faster than our own keepalive; allow that and no more.
      'grpc.http2.min_ping_interval_without_data_ms': Math.min(keepaliveTimeMs, 30_000) / 2,
      'grpc.max_receive_message_length': maxPayloadBytes + 64 * 1024,
      'grpc.max_concurrent_streams': options.maxConcurrentStreams ?? 1_000,
    });
    const hostServer: HostServiceServer = { connect: (call) => hosts.connect(call) };
    server.addService(HostServiceService, hostServer);
    server.addService(AgentServiceService, agentService({ authenticator, agents, clock, events, heartbeats, issuer, audienceTokenTtlMs, agentTokenTtlMs, delivery, logger: root }));
    server.addService(AdminServiceService, adminService({
        authenticator,
        adminTokens,
        audit,
        agents,
        hosts,
        delivery,
        store,
        keys,
        federationKeys,
        clock,
        heartbeats,
        logger: root,
        keyRevoker,
        drains,
        watchers,
      }));
    const health = new HealthService(['tether.v1.HostService', 'tether.v1.AgentService', 'tether.v1.AdminService']);
    health.addToServer(server);
    new ReflectionService(reflectedDescriptors()).addToServer(server);

    const certificates =
      options.tlsFiles === undefined ? undefined : WatchedCertificates.open({ ...options.tlsFiles, clock, logger: root.child({ component: 'tls' }) });
    const credentials =
      certificates !== undefined
        ? grpc.experimental.createCertificateProviderServerCredentials(certificates, null, false)
        : options.tls === undefined
          ? grpc.ServerCredentials.createInsecure()
          : grpc.ServerCredentials.createSsl(null, [{ cert_chain: options.tls.certPem, private_key: options.tls.keyPem }], false);
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(address, credentials, (err, boundPort) => (err === null ? resolve(boundPort) : reject(err)));
    }).catch(async (err: unknown) => {
      await certificates?.close();
      throw err;
    });

    const metrics = createMetrics({ events, sessions, store, clock, rotation: agents, agentTokenTtlMs, eventWatchers: () => watchers.count });
    let http: HttpServer | undefined;
    let httpPort = 0;
    if (options.httpAddress !== undefined) {
      const paths = issuerUrl === undefined ? undefined : federationPaths(issuerUrl);
      const discovery = issuerUrl === undefined ? undefined : JSON.stringify(discoveryDocument(issuerUrl));
      http = createServer((request, response) => {
        const path = (request.url ?? '').split('?')[0] ?? '';
        if (request.method === 'GET' && path === '/.well-known/jwks.json') {
          response.writeHead(200, { 'content-type': 'application/jwk-set+json', 'cache-control': `max-age=${JWKS_MAX_AGE_MS / 1000}` });
          response.end(JSON.stringify(keys.jwks(clock.now())));
          return;
        }
        if (request.method === 'GET' && paths !== undefined && federationKeys !== undefined) {
          if (paths.discovery.includes(path)) {
            response.writeHead(200, { 'content-type': 'application/json', 'cache-control': `max-age=${JWKS_MAX_AGE_MS / 1000}` });
            response.end(discovery);
            return;
          }
          if (paths.jwks.includes(path)) {
            response.writeHead(200, { 'content-type': 'application/jwk-set+json', 'cache-control': `max-age=${JWKS_MAX_AGE_MS / 1000}` });
            response.end(JSON.stringify(federationKeys.jwks(clock.now())));
            return;
          }
        }
        if (answerMetrics(metrics.registry, logger, request, response)) return;
        if (request.method === 'GET' && request.url === '/healthz') {
          const isServing = health.state === 'serving';
          response.writeHead(isServing ? 200 : 503, { 'content-type': 'text/plain' });
          response.end(isServing ? 'ok\n' : 'shutting down\n');
          return;
        }
        response.writeHead(404, { 'content-type': 'text/plain' });
        response.end('not found\n');
      });
      httpPort = await listen(http, options.httpAddress);
    }

    if (issuerUrl !== undefined && http === undefined) {
      logger.warn({ issuer: issuerUrl.issuer }, 'an issuer URL without an HTTP listener: no discovery document is served, so targets cannot find the federation keys');
    }
    agents.start();
    delivery.start();
    keys.start();
    federationKeys?.start();
    lostHosts.start();
    audit.start();
    eventLog.start();
    await agents.resumeFenced();
    await agents.placePending();
    // After the hosts' streams can open: a resumed drain moves agents as their hosts come back.
    await drains.start();
    logger.info({ port, httpPort, agentTokenTtlMs, hostTokenTtlMs, lostHostGraceMs, tls: options.tls !== undefined || certificates !== undefined, ...(certificates?.certificate === undefined ? {} : { certificate: certificates.certificate }) }, 'control plane serving');
    return new ControlPlane({ events, port, httpPort, server, http, agents, hosts, delivery, sessions, verifier, issuer, keys, federationKeys, logger, metrics, heartbeats, health, clock, shutdownGraceMs, lostHosts, drains, certificates, audit, eventLog, eventRecorder, watchers });
  }

  /** How many hosts are connected. */
  get connectedHosts(): number {
    return this.#sessions.size;
  }

  /** True when every rotation time has made due is done; for tests on a fake clock. */
  isSettled(): boolean {
    return this.#agents.isSettled();
  }

  /** @internal The lifecycle events (for tests: flush, prune, last id, buffered; record, to make many at once). */
  get eventLog(): Pick<EventLog, 'flush' | 'prune' | 'lastId' | 'pendingEvents' | 'droppedEvents' | 'record'> {
    return this.#eventLog;
  }

  /** @internal The WatchEvents streams (for tests: how many, how many cut, the most events one had waiting, the bound). */
  get eventWatchers(): Pick<EventWatchers, 'count' | 'cutTotal' | 'peakQueued' | 'maxQueuedPerWatcher'> {
    return this.#watchers;
  }

  /** @internal The host drains (for tests: whether one runs). */
  get drains(): Pick<HostDrains, 'isRunning' | 'status'> {
    return this.#drains;
  }

  /** Agents waiting out a restart backoff (their next start armed on the clock). */
  get restartsWaiting(): number {
    return this.#agents.restartsWaiting;
  }

  /** Verified tokens in the cache. */
  get verifierCacheEntries(): number {
    return this.#verifier.cacheEntries;
  }

  /** @internal Agents the heartbeat ledger holds; for tests that check ended and moved agents are forgotten. */
  get heartbeatLedgerEntries(): number {
    return this.#heartbeats.size;
  }

  /** @internal Connect streams open right now, authenticated or not; for tests that check none is left behind. */
  get openHostStreams(): number {
    return this.#hosts.openStreams;
  }

  /** @internal Host session Pings and credential rotations scheduled on the shared deadline heap; for tests that check none is left behind. */
  get hostSessionDeadlines(): number {
    return this.#hosts.scheduledDeadlines;
  }

  /** @internal The connect limiter's table of failing source addresses (size now, peak); for tests that flood it. */
  get connectLimiterSources(): HostService['connectLimiterSources'] {
    return this.#hosts.connectLimiterSources;
  }

  /** @internal Connect streams held before their credential is verified (now, peak, connections, refused at a bound); for tests that flood it. */
  get unverifiedHostStreams(): HostService['unverifiedStreams'] {
    return this.#hosts.unverifiedStreams;
  }

  /** @internal The Hello admission gate's gauges (in flight, peak, deferred); for tests of a reconnect herd. */
  get helloAdmission(): HostService['helloAdmission'] {
    return this.#hosts.helloAdmission;
  }

  /** @internal The issuer, for tests that forge edge cases. */
  get issuer(): TokenIssuer {
    return this.#issuer;
  }

  /** @internal The signing keys. */
  get keys(): SigningKeyRing {
    return this.#keys;
  }

  /** @internal The federation keys (audience tokens under an issuer URL); undefined without one. */
  get federationKeys(): SigningKeyRing | undefined {
    return this.#federationKeys;
  }

  /**
   * Stops serving, gracefully: health turns NOT_SERVING (for `""` and each
   * service; Watch streams are told and ended), new streams are refused, host
   * streams are ended (hosts reconnect with backoff), and calls already in
   * flight get up to `shutdownGraceMs` to finish; whatever is still open then
   * is cut. Then rotation and delivery stop (pending writes committed) and the
   * HTTP listener closes. Idempotent. Does not close the store.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#health.drain();
    this.#logger.info({ graceMs: this.#shutdownGraceMs }, 'control plane draining');
    // Listeners close and every connection gets GOAWAY: no new stream, while the calls in flight go on.
    const drained = new Promise<void>((resolve) => this.#server.tryShutdown(() => resolve()));
    // Host streams never end on their own; a host told UNAVAILABLE reconnects with backoff.
    this.#hosts.closeAll();
    // Nor do event watchers; each is told UNAVAILABLE and resumes from its last id.
    this.#watchers.closeAll();
    const graceOver = new AbortController();
    const isDrained = await Promise.race([
      drained.then(() => true),
      this.#shutdownGraceMs === 0 ? Promise.resolve(false) : this.#clock.sleep(this.#shutdownGraceMs, graceOver.signal).then(() => false),
    ]);
    graceOver.abort();
    if (!isDrained) {
      this.#logger.warn({ graceMs: this.#shutdownGraceMs }, 'shutdown grace over: cutting the calls still open');
      this.#server.forceShutdown();
      await drained;
    }
    // Only now: a call that was in flight may still have needed rotation, delivery and its group commit.
    await this.#lostHosts.close();
    await this.#drains.close();
    await this.#agents.close();
    await this.#delivery.close();
    await this.#keys.close();
    await this.#federationKeys?.close();
    await this.#audit.close();
    // Last: the parts above report their final events on the way out.
    this.#eventRecorder.close();
    await this.#eventLog.close();
    if (this.#http !== undefined) {
      const http = this.#http;
      http.closeAllConnections();
      await new Promise<void>((resolve) => http.close(() => resolve()));
    }
    this.#metrics.close();
    await this.#certificates?.close();
    this.#logger.info('control plane stopped');
  }
}
