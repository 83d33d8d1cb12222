/** Anything shaped like a compact JWS (header.payload.signature, base64url JSON objects). */
export const JWT_SHAPE = /eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/;

/** Throws if `text` holds any of `secrets` or anything JWT-shaped; the message names neither. */
export function assertNoSecrets(text: string, secrets: Iterable<string>, where: string): void {
  let index = 0;
  for (const secret of secrets) {
    if (secret !== '' && text.includes(secret)) throw new Error(`${where} contains secret #${index}`);
    index++;
  }
  if (JWT_SHAPE.test(text)) throw new Error(`${where} contains something JWT-shaped`);
}

/** How many characters of a canary's secret part count as that canary being found. */
export const CANARY_WINDOW = 12;

/**
 * Throws if `text` holds any canary in full or any {@link CANARY_WINDOW}
 * characters running of its secret part (its `parts`: the token, a join
 * token's secret, …), naming the canary and where, never showing it. Canary
 * secrets are random enough that such a run in ordinary output means a leak.
 */
export function assertNoCanaries(text: string, canaries: readonly { name: string; parts: readonly string[] }[], where: string): void {
  for (const { name, parts } of canaries) {
    for (const part of parts) {
      for (let start = 0; start + CANARY_WINDOW <= Math.max(part.length, CANARY_WINDOW); start++) {
        const window = part.slice(start, start + CANARY_WINDOW);
        if (window.length > 0 && text.includes(window)) throw new Error(`${where} contains the ${name} canary (characters ${start + 1}–${start + window.length} of it)`);
      }
    }
  }
}
