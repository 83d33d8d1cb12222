import type * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import { InvalidSecretError } from '../common/errors.js';
import { isRefusal, parseRetryAfterMs, REFUSAL_METADATA_KEY, RETRY_AFTER_METADATA_KEY, type Refusal } from '../common/protocol.js';
import { redactSecrets } from '../common/secrets.js';
import { shuffledAddresses } from '../common/server-addresses.js';
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
  /** The address whose stream was lost. */
  address: string;
  /** The address the next attempt goes to. */
  nextAddress: string;
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
   * The control plane's addresses (at least one), tried in an order shuffled
   * once with `random`. After a lost stream the next address not yet tried
   * since the last welcomed stream (or the last full round) is tried at once;
   * only when every address has failed does the loop wait its backoff.
   */
  addresses: readonly string[];
  /**
   * A new channel for one attempt, to `address`. The loop owns it and closes it once that
   * attempt's stream has ended, so no attempt inherits a channel in grpc-js's
   * own reconnect backoff (1 s ×1.6 to 120 s by default), which would add to ours.
   */
  openChannel: (address: string) => grpc.Channel;
  /** Runs one stream on `channel` (to `address`) until it ends. */
  runStream: (channel: grpc.Channel, address: string) => Promise<StreamOutcome>;
  /** The lowest remaining life of the tokens held now (Infinity if none): bounds the backoff. */
  lowestTimeToExpiryMs: () => number;
  /** A stream ended (not refused, not closing); the next attempt comes after `retryInMs`. */
  onLost: (outcome: StreamOutcome, retryInMs: number, plan: RetryPlan) => void;
}

/**
 * Keeps one stream to the control plane: runs a stream on a fresh channel,
 * and when it ends tries the next of the control plane's addresses at once if
 * one has not been tried since the last welcomed stream (a control plane that
 * moved is found without waiting); once all have failed, waits a full-jitter
 * backoff bounded by the tokens' life ({@link reconnectDelayMs}) on the
 * injected clock, then goes round again. The attempt count (one per failed
 * round) goes back to 0 after a stream that was welcomed. A Hello the control
 * plane deferred (RESOURCE_EXHAUSTED with a retry-after) is retried after the
 * retry-after, jittered and still bounded by the tokens' life
 * ({@link retryAfterDelayMs}); it does not grow the backoff, as the control
 * plane was reached and set the pace itself. Resolves with
 * the outcome of a stream that carried a final refusal or found the host's own
 * credential unusable ({@link StreamOutcome.fault}), or undefined once `signal` aborted.
 */
export async function runConnectionLoop(options: ConnectionLoopOptions): Promise<StreamOutcome | undefined> {
  const { clock, signal } = options;
  if (options.addresses.length === 0) throw new RangeError('runConnectionLoop needs at least one address');
  const order = shuffledAddresses(options.addresses, options.random);
  /** Addresses whose attempt failed since the last welcomed stream or the last backoff. */
  const failedInRound = new Set<string>();
  let index = 0;
  let attempt = 0;
  while (!signal.aborted) {
    const address = order[index] ?? '';
    const outcome = await runAttempt(options, address);
    if (signal.aborted) return undefined;
    if (outcome.refusal !== undefined || outcome.fault !== undefined) return outcome;
    if (outcome.isWelcomed) {
      attempt = 0;
      failedInRound.clear();
    }
    failedInRound.add(address);
    const untried = nextUntried(order, index, failedInRound);
    const lowestMs = options.lowestTimeToExpiryMs();
    let plan: RetryPlan;
    if (outcome.retryAfterMs !== undefined && !outcome.isWelcomed) {
      // A control plane was reached and set the pace: a new round after its retry-after.
      failedInRound.clear();
      index = (index + 1) % order.length;
      const retryInMs = retryAfterDelayMs(outcome.retryAfterMs, lowestMs, options.random, options.backoff);
      const capMs = retryAfterDelayMs(outcome.retryAfterMs, lowestMs, () => 1, options.backoff);
      plan = { retryInMs, attempt, capMs, retryAfterMs: outcome.retryAfterMs, address, nextAddress: order[index] ?? '' };
    } else if (untried !== undefined) {
      index = untried;
      plan = { retryInMs: 0, attempt, capMs: 0, retryAfterMs: undefined, address, nextAddress: order[index] ?? '' };
    } else {
      failedInRound.clear();
      index = (index + 1) % order.length;
      const retryInMs = reconnectDelayMs(attempt, lowestMs, options.random, options.backoff);
      plan = { retryInMs, attempt: attempt + 1, capMs: reconnectCapMs(attempt, lowestMs, options.backoff), retryAfterMs: undefined, address, nextAddress: order[index] ?? '' };
      attempt++;
    }
    options.onLost(outcome, plan.retryInMs, plan);
    if (plan.retryInMs > 0) await clock.sleep(plan.retryInMs, signal);
  }
  return undefined;
}

/** The index of the first address after `index` (cyclically) not in `failed`, if any. */
function nextUntried(order: readonly string[], index: number, failed: ReadonlySet<string>): number | undefined {
  for (let step = 1; step < order.length; step++) {
    const candidate = (index + step) % order.length;
    if (!failed.has(order[candidate] ?? '')) return candidate;
  }
  return undefined;
}

/** One attempt on its own channel, closed before the next attempt is made. */
async function runAttempt(options: ConnectionLoopOptions, address: string): Promise<StreamOutcome> {
  const channel = options.openChannel(address);
  try {
    return await options.runStream(channel, address);
  } catch (err) {
    if (err instanceof InvalidSecretError) return { isWelcomed: false, code: status.UNAUTHENTICATED, details: err.message, refusal: undefined, fault: err };
    // Reading the stored credential can fail (a disk hiccup): retried like any lost stream, never the end of the loop.
    // The message is a library's and is logged: filtered, as grpc-js quotes header values in its own.
    return { isWelcomed: false, code: status.UNKNOWN, details: err instanceof Error ? redactSecrets(err.message) : 'stream failed', refusal: undefined };
  } finally {
    channel.close();
  }
}
