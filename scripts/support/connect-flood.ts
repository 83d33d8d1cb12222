/**
 * A flood of `HostService.Connect` attempts, as an attacker would send them,
 * from a worker thread (connect-flood-worker.mjs) so the attacker's side runs
 * beside the control plane rather than on its event loop. Shared by the flood
 * test and `npm run flood` (a script never imports from test/).
 */
import { Worker } from 'node:worker_threads';

/** How the attacker talks: grpc-js channels, or raw HTTP/2 requests that never end their side. */
export type FloodClient = 'grpc-js' | 'http2';

/** Options of {@link connectFlood}. */
export interface ConnectFloodOptions {
  /** `host:port` to connect to. */
  target: string;
  /** Default `grpc-js`. */
  client?: FloodClient;
  /** Attempts in all. */
  attempts: number;
  /** Connections (grpc-js channels, never shared) the attempts are spread over. */
  channels: number;
  /** Attempts in flight at once on each channel. */
  inFlightPerChannel: number;
  /** Host ids the forged `Join <id>.<random>` credentials name, in turn. */
  hostIds: readonly string[];
  /** How often (in ended attempts) {@link ConnectFloodOptions.onProgress} is told. Default 500. */
  progressEvery?: number;
  /** Told every `progressEvery` ended attempts, with how many have ended. */
  onProgress?: (ended: number) => void;
  /** Each attempt's deadline. Default 20 s. */
  attemptDeadlineMs?: number;
  /** No attempt starts after this long. Default 10 minutes. */
  maxMs?: number;
}

/** What a flood came to. */
export interface ConnectFloodResult {
  /**
   * Attempts by how they ended: the gRPC status code (as a string), `held` (a
   * raw HTTP/2 attempt the server had not let go of by its deadline) or
   * `no-status` (one reset without a status).
   */
  codes: Map<string, number>;
  /** Attempts ended (fewer than asked only if `maxMs` ran out). */
  ended: number;
  elapsedMs: number;
}

interface ProgressMessage {
  type: 'progress';
  ended: number;
}

interface DoneMessage {
  type: 'done';
  codes: Record<string, number>;
  ended: number;
  elapsedMs: number;
}

/** Runs a flood in a worker thread; resolves once every attempt has ended and the worker is gone. */
export function connectFlood(options: ConnectFloodOptions): Promise<ConnectFloodResult> {
  const worker = new Worker(new URL('./connect-flood-worker.mjs', import.meta.url), {
    workerData: {
      target: options.target,
      client: options.client ?? 'grpc-js',
      attempts: options.attempts,
      channels: options.channels,
      inFlightPerChannel: options.inFlightPerChannel,
      hostIds: [...options.hostIds],
      progressEvery: options.progressEvery ?? 500,
      attemptDeadlineMs: options.attemptDeadlineMs ?? 20_000,
      maxMs: options.maxMs ?? 600_000,
    },
  });
  return new Promise<ConnectFloodResult>((resolve, reject) => {
    let result: ConnectFloodResult | undefined;
    worker.on('message', (message: ProgressMessage | DoneMessage) => {
      if (message.type === 'progress') options.onProgress?.(message.ended);
      else {
        result = { codes: new Map(Object.entries(message.codes)), ended: message.ended, elapsedMs: message.elapsedMs };
      }
    });
    worker.once('error', reject);
    worker.once('exit', (code) => (result !== undefined ? resolve(result) : reject(new Error(`the flood worker exited (${code}) without a result`))));
  });
}
