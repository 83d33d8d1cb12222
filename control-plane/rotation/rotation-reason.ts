/**
 * Why an agent credential was replaced within its placement: a fixed word,
 * safe as a metric label.
 * - `due`: its rotation time came (the scheduler).
 * - `resume`: its host came back holding a token due or past half its life.
 * - `delivery`: a message was to be delivered under a token past half its life.
 * - `forced`: an operator asked (`agents rotate`).
 * - `key-revoked`: the key that signed it was revoked.
 */
export type RotationReason = 'due' | 'resume' | 'delivery' | 'forced' | 'key-revoked';

/** Every {@link RotationReason}, so a counter can show each at 0 before it first happens. */
export const ROTATION_REASONS: readonly RotationReason[] = ['due', 'resume', 'delivery', 'forced', 'key-revoked'];
