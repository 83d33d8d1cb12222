/** The version of the HostService.Connect protocol both sides speak. */
export const PROTOCOL_VERSION = 1;

/** Trailing-metadata key of a final refusal: the host must not retry with that credential. */
export const REFUSAL_METADATA_KEY = 'tether-refusal';

/**
 * The final refusals a host exits on. `generation-ahead`: the host holds a
 * credential generation the store never recorded (within one epoch), so the
 * store lost a commit the host had been answered for; it cannot be trusted to
 * go on and needs enrolling again.
 */
export type Refusal = 'revoked' | 'expired' | 'unknown-host' | 'generation-ahead';

/** Whether `value` is one of the {@link Refusal}s. */
export function isRefusal(value: unknown): value is Refusal {
  return value === 'revoked' || value === 'expired' || value === 'unknown-host' || value === 'generation-ahead';
}

/**
 * The largest message a host's channel receives: grpc-js's default, which
 * hosts set explicitly so the bound below holds whatever that default becomes.
 * It is fixed before the stream opens, so Welcome cannot raise it.
 */
export const HOST_MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024;

/**
 * Room left in a host-bound envelope for everything but the payload (a Deliver's
 * agent id, message id, sender and content type come to well under 1 KiB).
 */
export const ENVELOPE_ALLOWANCE_BYTES = 64 * 1024;

/**
 * The largest payload a control plane may accept: a Deliver carrying it still
 * fits a host's receive limit. A larger one would end the host's stream with
 * RESOURCE_EXHAUSTED, and as it is re-sent first on every reconnect, for ever.
 */
export const MAX_PAYLOAD_BYTES_CEILING = HOST_MAX_RECEIVE_MESSAGE_BYTES - ENVELOPE_ALLOWANCE_BYTES;

/**
 * The most a DeliverBatch may weigh, encoded: the same room as one largest
 * Deliver, so a batch never comes nearer a host's receive limit than a single
 * delivery may. The control plane counts each delivery at an upper bound of
 * its encoded size (see `deliverBytesBound` in the delivery manager), so the
 * real batch is lighter still.
 */
export const MAX_DELIVER_BATCH_BYTES = MAX_PAYLOAD_BYTES_CEILING;

/**
 * Trailing-metadata key of a deferral: the control plane is busy (too many
 * Hellos at once) and asks the host to try again after this many milliseconds.
 * Sent with RESOURCE_EXHAUSTED; never a final refusal.
 */
export const RETRY_AFTER_METADATA_KEY = 'tether-retry-after-ms';

/** The retry-after a trailer value carries (a whole number of ms, at least 0), or undefined if there is none or it is malformed. */
export function parseRetryAfterMs(value: unknown): number | undefined {
  if (typeof value !== 'string' || !/^\d{1,12}$/.test(value)) return undefined;
  return Number(value);
}
