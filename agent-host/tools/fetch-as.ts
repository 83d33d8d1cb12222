import { UnavailableError } from '../../common/errors.js';
import { wellFormedToken, type BearerSource } from './credential-source.js';
import { assertHttpAllowed } from './loopback.js';

/**
 * `fetch(url, init)` as the agent: `authorization: Bearer <token>` read from
 * `source` at the moment of the call (give an audience token's source,
 * `tokens.source(audience)`, for a third-party service). Refuses plain `http:`
 * to anything but loopback before the token is read or a connection opened
 * (InvalidArgumentError). Redirects are refused unless `init.redirect` says
 * otherwise, so the token goes only where the caller pointed it. A network
 * failure rejects with UnavailableError; any HTTP status resolves, 401 included.
 */
export async function fetchAs(source: BearerSource, url: string | URL, init: RequestInit = {}): Promise<Response> {
  const target = assertHttpAllowed(url);
  const headers = new Headers(init.headers);
  headers.set('authorization', `Bearer ${wellFormedToken(await source.get())}`);
  try {
    return await fetch(target, { ...init, headers, redirect: init.redirect ?? 'error' });
  } catch (err) {
    if (err instanceof Error && err.name === 'AbortError') throw err;
    throw new UnavailableError(`HTTP request to ${target.origin} failed`, { cause: err });
  }
}
