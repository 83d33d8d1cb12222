import { InvalidArgumentError } from '../../common/errors.js';
import { isLoopback } from '../../common/loopback.js';
import { FEDERATION_ALGORITHM } from './signing-keys.js';

/** Where the OpenID discovery document is, under the issuer URL (OpenID Connect Discovery 1.0, section 4). */
export const DISCOVERY_PATH = '/.well-known/openid-configuration';

/** Where the federation JWKS (the keys of audience tokens only) is, under the issuer URL. */
export const FEDERATION_JWKS_PATH = '/.well-known/federation-jwks.json';

/** The claims an audience token carries under federation (documented in docs/federation.md). */
export const FEDERATION_CLAIMS = ['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti', 'host', 'gen', 'name', 'labels'] as const;

/** A checked issuer URL. */
export interface IssuerUrl {
  /** The `iss` of audience tokens, and the discovery document's `issuer`: the URL as given, without a trailing `/`. */
  issuer: string;
  /** Its path, without a trailing `/` (`''` at the root). */
  pathPrefix: string;
}

/**
 * Checks `--issuer-url`: an absolute `https:` URL (plain `http:` only on a
 * loopback host, for tests and a local front), no query, fragment or
 * credentials, as OpenID Connect Discovery requires of an issuer.
 */
export function parseIssuerUrl(value: string): IssuerUrl {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`--issuer-url must be an absolute https:// URL, got ${JSON.stringify(value.slice(0, 200))}`);
  }
  const isHttps = url.protocol === 'https:';
  if (!isHttps && !(url.protocol === 'http:' && isLoopback(url.hostname))) {
    throw new InvalidArgumentError(`--issuer-url must be https:// (plain http:// only on loopback), got ${url.protocol}//${url.host}`);
  }
  if (url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '' || value.includes('?') || value.includes('#')) {
    throw new InvalidArgumentError('--issuer-url must have no query, fragment or credentials');
  }
  const pathPrefix = url.pathname.replace(/\/+$/, '');
  return { issuer: `${url.origin}${pathPrefix}`, pathPrefix };
}

/**
 * The paths the HTTP listener answers for the discovery document and the
 * federation JWKS: under the issuer URL's path, and at the root too when that
 * path is not empty (a front that strips its prefix).
 */
export function federationPaths(issuerUrl: IssuerUrl): { discovery: string[]; jwks: string[] } {
  const under = (path: string): string[] => (issuerUrl.pathPrefix === '' ? [path] : [`${issuerUrl.pathPrefix}${path}`, path]);
  return { discovery: under(DISCOVERY_PATH), jwks: under(FEDERATION_JWKS_PATH) };
}

/** The OpenID discovery document served at `<issuer>/.well-known/openid-configuration`. */
export function discoveryDocument(issuerUrl: IssuerUrl): Record<string, unknown> {
  return {
    issuer: issuerUrl.issuer,
    jwks_uri: `${issuerUrl.issuer}${FEDERATION_JWKS_PATH}`,
    id_token_signing_alg_values_supported: [FEDERATION_ALGORITHM],
    response_types_supported: ['id_token'],
    subject_types_supported: ['public'],
    claims_supported: [...FEDERATION_CLAIMS],
  };
}
