import { status, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import type { Logger } from '../../common/logger.js';
import type { AuditLog } from '../audit/audit-log.js';
import { auditTargets } from '../audit/audit-targets.js';
import { ADMIN_METHOD_ROLES, authorizeAdminCall, type AdminMethod } from '../auth/admin-roles.js';
import type { AdminCaller } from '../auth/admin-tokens.js';
import type { Authenticator } from '../auth/authenticator.js';
import { toStatus } from '../grpc/status.js';

/** What {@link guardAdminService} needs. */
export interface AdminGuardDeps {
  authenticator: Authenticator;
  audit: AuditLog;
  logger: Logger;
  /** Told who makes each call it lets through, before the handler runs (handlers that record the caller read it back). */
  onAuthorized?: (call: object, caller: AdminCaller) => void;
}

/** `/tether.v1.AdminService/DispatchAgent` → `DispatchAgent`. */
function rpcName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

type UnaryHandler = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => void;
type StreamHandler = (call: ServerWritableStream<unknown, unknown>) => void;

/**
 * Wraps every handler of AdminService in the one place that decides who may
 * call it: the admin token is checked (against the store: a retired token is
 * refused at once), the method's least role is enforced
 * ({@link ADMIN_METHOD_ROLES}; PERMISSION_DENIED otherwise), and the call is
 * audited once it has ended, with the token id, the method, the ids it named
 * and its status code (never a secret or a payload). A unary call is answered
 * after its record is written, so whoever reads the log after an answer finds
 * it. Calls refused as unauthenticated are not audited: they have no verified
 * caller, and an anonymous caller must not push real records out of a log
 * bounded by count (they are counted in the auth-failure metric).
 *
 * A server stream is audited when it is let through or refused (its own end is
 * not recorded). Client streams are refused at construction: nothing here
 * would audit them.
 */
export function guardAdminService<S extends UntypedServiceImplementation>(definition: ServiceDefinition, handlers: S, deps: AdminGuardDeps): S {
  const { authenticator, audit, logger } = deps;
  const guarded: UntypedServiceImplementation = {};
  for (const [method, spec] of Object.entries(definition)) {
    const inner = handlers[method];
    if (inner === undefined) throw new Error(`no handler for ${spec.path}`);
    if (spec.requestStream) throw new Error(`${spec.path} is a client stream: the admin guard does not audit those`);
    // Fail closed, at start: a method without a row in the table would otherwise be nobody's to refuse.
    if (!Object.hasOwn(ADMIN_METHOD_ROLES, method)) throw new Error(`${spec.path} has no role in ADMIN_METHOD_ROLES (control-plane/auth/admin-roles.ts)`);
    const name = rpcName(spec.path);
    /** Authenticates and authorizes: the caller (none if unauthenticated) and why it was refused, if it was. */
    const admit = async (call: ServerUnaryCall<unknown, unknown>): Promise<{ caller: AdminCaller; refusal?: unknown } | { caller?: undefined; refusal: unknown }> => {
      let caller: AdminCaller;
      try {
        caller = await authenticator.adminCaller(call.metadata);
      } catch (err) {
        return { refusal: err };
      }
      try {
        authorizeAdminCall(method as AdminMethod, name, caller);
      } catch (err) {
        return { caller, refusal: err };
      }
      deps.onAuthorized?.(call, caller);
      return { caller };
    };
    const unaryCall = async (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>, handler: UnaryHandler): Promise<void> => {
      const { caller, refusal } = await admit(call);
      if (caller === undefined) {
        callback(toStatus(refusal, logger));
        return;
      }
      if (refusal !== undefined) {
        const refused = toStatus(refusal, logger);
        await audit.record({ tokenId: caller.tokenId, method: name, targets: auditTargets(call.request), code: refused.code ?? status.UNKNOWN });
        callback(refused);
        return;
      }
      const [err, value] = await new Promise<Parameters<sendUnaryData<unknown>>>((resolve) => handler(call, (...answer) => resolve(answer)));
      const code = err === null || err === undefined ? status.OK : (err.code ?? status.UNKNOWN);
      await audit.record({ tokenId: caller.tokenId, method: name, targets: auditTargets(call.request, code === status.OK ? value : undefined), code });
      callback(err, value);
    };
    const streamCall = async (call: ServerWritableStream<unknown, unknown>, handler: StreamHandler): Promise<void> => {
      const { caller, refusal } = await admit(call);
      const refused = refusal === undefined ? undefined : toStatus(refusal, logger);
      if (caller !== undefined) await audit.record({ tokenId: caller.tokenId, method: name, targets: auditTargets(call.request), code: refused?.code ?? status.OK });
      if (refused !== undefined) {
        call.emit('error', refused);
        return;
      }
      handler(call);
    };
    /** The guard itself never throws (the audit log swallows its own failures); this only keeps a surprise from hanging a call. */
    const onGuardError = (err: unknown): void => logger.error({ err, method: name }, 'admin guard failed');
    if (!spec.responseStream) {
      const handler = inner as UnaryHandler;
      guarded[method] = ((call, callback) => {
        unaryCall(call, callback, handler).catch((err: unknown) => {
          onGuardError(err);
          callback({ code: status.INTERNAL, details: 'internal error' });
        });
      }) satisfies UnaryHandler;
    } else {
      const handler = inner as StreamHandler;
      guarded[method] = ((call) => {
        streamCall(call, handler).catch((err: unknown) => {
          onGuardError(err);
          call.emit('error', { code: status.INTERNAL, details: 'internal error' });
        });
      }) satisfies StreamHandler;
    }
  }
  return guarded as S;
}
