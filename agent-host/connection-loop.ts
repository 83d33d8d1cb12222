import type * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import type { Refusal } from '../common/protocol.js';
import { reconnectDelayMs, type ReconnectBackoffPolicy } from './reconnect-backoff.js';

/** What happened to one stream. */
export interface StreamOutcome {
  /** A Welcome arrived on it: the control plane took the host's Hello. */
  isWelcomed: boolean;
  code: number;
  details: string;
  /** A final refusal in the trailers: the host does no more. */
  refusal: Refusal | undefined;
}

/** Options of {@link runConnectionLoop}. */
export interface ConnectionLoopOptions {
  clock: Clock;
  /** Ends the loop: the stream in hand is expected to end when it fires, and no other is opened. */
  signal: AbortSignal;
  /** Uniform on [0, 1): the backoff's jitter. */
  random: () => number;
  backoff: ReconnectBackoffPolicy;
  /**
   * A new channel for one attempt. The loop owns it and closes it once that
   * attempt's stream has ended, so no attempt inherits a channel in grpc-js's
   * own reconnect backoff (1 s ×1.6 to 120 s by default), which would add to ours.
   */
  openChannel: () => grpc.Channel;
  /** Runs one stream on `channel` until it ends. */
  runStream: (channel: grpc.Channel) => Promise<StreamOutcome>;
  /** The lowest remaining life of the tokens held now (Infinity if none): bounds the backoff. */
  lowestTimeToExpiryMs: () => number;
  /** A stream ended (not refused, not closing); the next attempt comes after `retryInMs`. */
  onLost: (outcome: StreamOutcome, retryInMs: number) => void;
}

/**
 * Keeps one stream to the control plane: runs a stream on a fresh channel,
 * and when it ends waits a full-jitter backoff bounded by the tokens' life
 * ({@link reconnectDelayMs}) on the injected clock, then tries again. The
 * attempt count goes back to 0 after a stream that was welcomed. Resolves with
 * the outcome of a stream that carried a final refusal, or undefined once
 * `signal` aborted.
 */
export async function runConnectionLoop(options: ConnectionLoopOptions): Promise<StreamOutcome | undefined> {
  const { clock, signal } = options;
  let attempt = 0;
  while (!signal.aborted) {
    const outcome = await runAttempt(options);
    if (signal.aborted) return undefined;
    if (outcome.refusal !== undefined) return outcome;
    if (outcome.isWelcomed) attempt = 0;
    const retryInMs = reconnectDelayMs(attempt, options.lowestTimeToExpiryMs(), options.random, options.backoff);
    attempt++;
    options.onLost(outcome, retryInMs);
    await clock.sleep(retryInMs, signal);
  }
  return undefined;
}

/** One attempt on its own channel, closed before the next attempt is made. */
async function runAttempt(options: ConnectionLoopOptions): Promise<StreamOutcome> {
  const channel = options.openChannel();
  try {
    return await options.runStream(channel);
  } catch (err) {
    // Reading the stored credential can fail (a disk hiccup): retried like any lost stream, never the end of the loop.
    return { isWelcomed: false, code: status.UNKNOWN, details: err instanceof Error ? err.message : 'stream failed', refusal: undefined };
  } finally {
    channel.close();
  }
}
