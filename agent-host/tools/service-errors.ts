import { status, type ServiceError } from '@grpc/grpc-js';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  TetherError,
  UnauthenticatedError,
  UnavailableError,
} from '../../common/errors.js';

/** Whether `err` is a grpc-js ServiceError. */
export function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number' && 'metadata' in err;
}

/** Turns a grpc-js ServiceError into the typed error of its status, once, at the client edge. */
export function fromServiceError(err: unknown): Error {
  if (!isServiceError(err)) return err instanceof Error ? err : new Error(String(err));
  const details = err.details;
  switch (err.code) {
    case status.UNAUTHENTICATED:
      return new UnauthenticatedError(details, { cause: err });
    case status.PERMISSION_DENIED:
      return new PermissionDeniedError(details, { cause: err });
    case status.NOT_FOUND:
      return new NotFoundError(details, { cause: err });
    case status.INVALID_ARGUMENT:
      return new InvalidArgumentError(details, { cause: err });
    case status.FAILED_PRECONDITION:
      return new FailedPreconditionError(details, { cause: err });
    case status.RESOURCE_EXHAUSTED:
      return new ResourceExhaustedError(details, { cause: err });
    case status.UNAVAILABLE:
    case status.DEADLINE_EXCEEDED:
      return new UnavailableError(details, { cause: err });
    default:
      return new TetherError('unavailable', `${status[err.code] ?? err.code}: ${details}`, { cause: err });
  }
}
