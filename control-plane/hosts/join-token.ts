import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/** A parsed join token `ID.SECRET`. */
export interface JoinToken {
  hostId: string;
  secret: string;
}

/** Mints a join token for `hostId`: the token (shown once) and the hash to store. */
export function mintJoinToken(hostId: string): { joinToken: string; secretHash: string } {
  const secret = randomBytes(32).toString('base64url');
  return { joinToken: `${hostId}.${secret}`, secretHash: hashJoinSecret(secret) };
}

/** SHA-256 of a join secret, hex. Only this is stored. */
export function hashJoinSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Splits `ID.SECRET`; undefined if it is not of that form. */
export function parseJoinToken(value: string): JoinToken | undefined {
  const dot = value.indexOf('.');
  if (dot <= 0 || dot === value.length - 1 || value.length > 512) return undefined;
  return { hostId: value.slice(0, dot), secret: value.slice(dot + 1) };
}

/** Compares a presented secret with a stored hash in constant time. */
export function joinSecretMatches(secret: string, storedHash: string): boolean {
  const presented = Buffer.from(hashJoinSecret(secret), 'hex');
  const stored = Buffer.from(storedHash, 'hex');
  return presented.length === stored.length && timingSafeEqual(presented, stored);
}
