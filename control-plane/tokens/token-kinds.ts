/** The kinds of token the control plane issues; each is accepted in exactly one place. */
export type TokenKind = 'agent' | 'host' | 'audience';

/** The JOSE `typ` header of each kind, checked on verify so no kind passes for another. */
export const TOKEN_TYPES: Readonly<Record<TokenKind, string>> = {
  agent: 'tether-agent+jwt',
  host: 'tether-host+jwt',
  audience: 'tether-aud+jwt',
};

/** Tokens longer than this are refused before any parsing. */
export const MAX_TOKEN_LENGTH = 8192;

/** What a verified (or freshly issued) token says. Safe to log: holds no token. */
export interface TokenClaims {
  kind: TokenKind;
  /** Agent id for agent and audience tokens, host id for host tokens. */
  subject: string;
  /** For agent and audience tokens: the agent's host. */
  hostId: string;
  audience: string;
  generation: number;
  /** For agent tokens: the placement the token belongs to. */
  incarnation: number;
  tokenId: string;
  keyId: string;
  issuedAtMs: number;
  expiresAtMs: number;
}

/** A token and its claims. */
export interface IssuedToken {
  token: string;
  claims: TokenClaims;
}
