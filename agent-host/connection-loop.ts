import type * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import { InvalidSecretError } from '../common/errors.js';
import { isRefusal, parseRetryAfterMs, REFUSAL_METADATA_KEY, RETRY_AFTER_METADATA_KEY, type Refusal } from '../common/protocol.js';
import { redactSecrets } from '../common/secrets.js';
import { reconnectCapMs, reconnectDelayMs, retryAfterDelayMs, type ReconnectBackoffPolicy } from './reconnect-backoff.js';

/** What happened to one stream. */
export interface StreamOutcome {
  /** A Welcome arrived on it: the control plane took the host's Hello. */
  isWelcomed: boolean;
  code: number;
  details: string;
  /** A final refusal in the trailers: the host does no more. */
  refusal: Refusal | undefined;
  /**
   * The control plane was busy (RESOURCE_EXHAUSTED with a retry-after in the
   * trailers): the next attempt comes after about this long. Never final.
   */
  retryAfterMs?: number | undefined;
  /**
   * The host's own credential (join token or stored host credential) is
   * unusable: malformed, so no retry can succeed. Final, like a refusal, but
   * found on this side; its message names what is wrong, never the value.
   */
  fault?: InvalidSecretError | undefined;
}

/** The outcome of a stream that ended with `streamStatus`, reading its trailers (final refusal, retry-after). */
export function streamOutcomeOf(streamStatus: grpc.StatusObject, isWelcomed: boolean): StreamOutcome {
  const refusal = streamStatus.metadata.get(REFUSAL_METADATA_KEY)[0];
  const retryAfterMs =
    streamStatus.code === status.RESOURCE_EXHAUSTED ? parseRetryAfterMs(streamStatus.metadata.get(RETRY_AFTER_METADATA_KEY)[0]) : undefined;
  return {
    isWelcomed,
    code: streamStatus.code,
    details: streamStatus.details,
    refusal: streamStatus.code !== status.OK && isRefusal(refusal) ? refusal : undefined,
    retryAfterMs,
  };
}

/** How the loop chose the delay before its next attempt. */
export interface RetryPlan {
  retryInMs: number;
  /** Failed attempts since the last welcomed stream, this one included (the backoff's exponent is one less). */
  attempt: number;
  /** The cap the backoff drew `retryInMs` under (for a retry-after: the bound it was held to). */
  capMs: number;
  /** The control plane's retry-after, when it deferred the Hello. */
  retryAfterMs: number | undefined;
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
  onLost: (outcome: StreamOutcome, retryInMs: number, plan: RetryPlan) => void;
}

/**
 * Keeps one stream to the control plane: runs a stream on a fresh channel,
 * and when it ends waits a full-jitter backoff bounded by the tokens' life
 * ({@link reconnectDelayMs}) on the injected clock, then tries again. The
 * attempt count goes back to 0 after a stream that was welcomed. A Hello the
 * control plane deferred (RESOURCE_EXHAUSTED with a retry-after) is retried
 * after the retry-after, jittered and still bounded by the tokens' life
 * ({@link retryAfterDelayMs}); it does not grow the backoff, as the control
 * plane was reached and set the pace itself. Resolves with
 * the outcome of a stream that carried a final refusal or found the host's own
 * credential unusable ({@link StreamOutcome.fault}), or undefined once `signal` aborted.
 */
export async function runConnectionLoop(options: ConnectionLoopOptions): Promise<StreamOutcome | undefined> {
  const { clock, signal } = options;
  let attempt = 0;
  while (!signal.aborted) {
    const outcome = await runAttempt(options);
    if (signal.aborted) return undefined;
    if (outcome.refusal !== undefined || outcome.fault !== undefined) return outcome;
    if (outcome.isWelcomed) attempt = 0;
    const lowestMs = options.lowestTimeToExpiryMs();
    let plan: RetryPlan;
    if (outcome.retryAfterMs !== undefined && !outcome.isWelcomed) {
      const retryInMs = retryAfterDelayMs(outcome.retryAfterMs, lowestMs, options.random, options.backoff);
      plan = { retryInMs, attempt, capMs: retryAfterDelayMs(outcome.retryAfterMs, lowestMs, () => 1, options.backoff), retryAfterMs: outcome.retryAfterMs };
    } else {
      const retryInMs = reconnectDelayMs(attempt, lowestMs, options.random, options.backoff);
      plan = { retryInMs, attempt: attempt + 1, capMs: reconnectCapMs(attempt, lowestMs, options.backoff), retryAfterMs: undefined };
      attempt++;
    }
    options.onLost(outcome, plan.retryInMs, plan);
    await clock.sleep(plan.retryInMs, signal);
  }
  return undefined;
}

/** One attempt on its own channel, closed before the next attempt is made. */
async function runAttempt(options: ConnectionLoopOptions): Promise<StreamOutcome> {
  const channel = options.openChannel();
  try {
    return await options.runStream(channel);
  } catch (err) {
    if (err instanceof InvalidSecretError) return { isWelcomed: false, code: status.UNAUTHENTICATED, details: err.message, refusal: undefined, fault: err };
    // Reading the stored credential can fail (a disk hiccup): retried like any lost stream, never the end of the loop.
    // The message is a library's and is logged: filtered, as grpc-js quotes header values in its own.
    return { isWelcomed: false, code: status.UNKNOWN, details: err instanceof Error ? redactSecrets(err.message) : 'stream failed', refusal: undefined };
  } finally {
    channel.close();
  }
}
