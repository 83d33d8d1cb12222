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
