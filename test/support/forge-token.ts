import { createHmac } from 'node:crypto';
import { decodeJwt, decodeProtectedHeader, SignJWT, type CryptoKey, type JWTHeaderParameters, type JWTPayload } from 'jose';

/** A JWT's header and payload, decoded and mutable, for building variants of a real token. */
export interface TokenParts {
  header: JWTHeaderParameters;
  payload: JWTPayload;
}

/** The decoded header and payload of `token` (no verification). */
export function partsOf(token: string): TokenParts {
  return { header: { ...decodeProtectedHeader(token) } as JWTHeaderParameters, payload: { ...decodeJwt(token) } };
}

/** base64url of a string or bytes. */
export function base64url(data: string | Uint8Array): string {
  return Buffer.from(data).toString('base64url');
}

/** `header.payload`: the JWS signing input, as an attacker would build it by hand. */
export function signingInput(header: Record<string, unknown>, payload: Record<string, unknown>): string {
  return `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(payload))}`;
}

/** An unsecured JWT (`alg: none`, empty signature), built by hand. */
export function unsecuredJwt(header: Record<string, unknown>, payload: Record<string, unknown>): string {
  return `${signingInput({ ...header, alg: 'none' }, payload)}.`;
}

/** An HS256 JWT keyed with `secret`, built by hand (for the "public key as HMAC secret" confusion). */
export function hs256Jwt(header: Record<string, unknown>, payload: Record<string, unknown>, secret: string | Uint8Array): string {
  const input = signingInput({ ...header, alg: 'HS256' }, payload);
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}

/** Signs exactly `header` and `payload` with an Ed25519 key (jose adds nothing of its own). */
export async function signEdDsa(header: JWTHeaderParameters, payload: JWTPayload, privateKey: CryptoKey): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ ...header, alg: 'EdDSA' }).sign(privateKey);
}

/** `token` with its payload replaced by `payload`, header and signature kept as they were. */
export function withPayload(token: string, payload: JWTPayload): string {
  const [header, , signature] = token.split('.');
  return `${header ?? ''}.${base64url(JSON.stringify(payload))}.${signature ?? ''}`;
}
