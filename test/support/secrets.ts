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
