/**
 * Typed errors. Every failure Tether reports has a stable `code`; servers map
 * codes to gRPC statuses in one place per edge, clients map statuses back once.
 * Messages never contain a token.
 */

/** The stable codes of {@link TetherError}. */
export type TetherErrorCode =
  | 'unauthenticated'
  | 'token-expired'
  | 'token-revoked'
  | 'permission-denied'
  | 'not-found'
  | 'already-exists'
  | 'invalid-argument'
  | 'failed-precondition'
  | 'resource-exhausted'
  | 'out-of-range'
  | 'unavailable'
  | 'closed'
  | 'protocol';

/** Base class of every error Tether throws on purpose. */
export class TetherError extends Error {
  readonly code: TetherErrorCode;

  constructor(code: TetherErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A credential was missing, malformed, or failed verification. */
export class UnauthenticatedError extends TetherError {
  constructor(message = 'unauthenticated', options?: ErrorOptions) {
    super('unauthenticated', message, options);
  }
}

/** A credential is past its expiry. */
export class TokenExpiredError extends TetherError {
  constructor(message = 'token expired', options?: ErrorOptions) {
    super('token-expired', message, options);
  }
}

/** A credential was revoked (its agent stopped, or its holder revoked). */
export class TokenRevokedError extends TetherError {
  constructor(message = 'token revoked', options?: ErrorOptions) {
    super('token-revoked', message, options);
  }
}

/** The caller is authenticated but may not do this. */
export class PermissionDeniedError extends TetherError {
  constructor(message = 'permission denied', options?: ErrorOptions) {
    super('permission-denied', message, options);
  }
}

/** The named thing does not exist. */
export class NotFoundError extends TetherError {
  constructor(message: string, options?: ErrorOptions) {
    super('not-found', message, options);
  }
}

/** The thing to create exists already. */
export class AlreadyExistsError extends TetherError {
  constructor(message: string, options?: ErrorOptions) {
    super('already-exists', message, options);
  }
}

/** A request was malformed. */
export class InvalidArgumentError extends TetherError {
  constructor(message: string, options?: ErrorOptions) {
    super('invalid-argument', message, options);
  }
}

/** The system is not in a state where this can be done. */
export class FailedPreconditionError extends TetherError {
  constructor(message: string, options?: ErrorOptions) {
    super('failed-precondition', message, options);
  }
}

/** A bound was reached (an outbox, a budget). */
export class ResourceExhaustedError extends TetherError {
  constructor(message: string, options?: ErrorOptions) {
    super('resource-exhausted', message, options);
  }
}

/** A position asked for is outside what is kept (an event id already pruned). */
export class OutOfRangeError extends TetherError {
  constructor(message: string, options?: ErrorOptions) {
    super('out-of-range', message, options);
  }
}

/** Something is not reachable now; retrying may help. */
export class UnavailableError extends TetherError {
  constructor(message: string, options?: ErrorOptions) {
    super('unavailable', message, options);
  }
}

/** The object was closed; it does no more work. */
export class ClosedError extends TetherError {
  constructor(what: string, options?: ErrorOptions) {
    super('closed', `${what} is closed`, options);
  }
}

/** A peer broke the protocol. */
export class ProtocolError extends TetherError {
  constructor(message: string, options?: ErrorOptions) {
    super('protocol', message, options);
  }
}

/**
 * A secret (admin, join, host or agent token) as read is unusable: empty, more
 * than one line, or a character no token has. The message says which and where
 * (a path or a variable name, a line, a position), never the value.
 */
export class InvalidSecretError extends InvalidArgumentError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
  }
}
