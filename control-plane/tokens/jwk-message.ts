import type { JWK } from 'jose';
import type { GetJwksResponse, Jwk } from '../../gen/tether/v1/admin.js';

/** The members of a public JWK that GetJwks carries, in the order RFC 7517 and RFC 8037 list them. */
const MEMBERS = ['kty', 'crv', 'x', 'y', 'kid', 'alg', 'use'] as const;

/** A public JWK as the GetJwks message (absent members empty). */
export function jwkToMessage(jwk: JWK): Jwk {
  return { kty: jwk.kty ?? '', crv: jwk.crv ?? '', x: jwk.x ?? '', y: jwk.y ?? '', kid: jwk.kid ?? '', alg: jwk.alg ?? '', use: jwk.use ?? '' };
}

/** A GetJwks answer as the JWKS document `/.well-known/jwks.json` serves (empty members left out). */
export function jwksDocument(response: Pick<GetJwksResponse, 'keys'>): { keys: JWK[] } {
  return {
    keys: response.keys.map((key) => {
      const jwk: JWK = {};
      for (const member of MEMBERS) if (key[member] !== '') jwk[member] = key[member];
      return jwk;
    }),
  };
}
