/**
 * `control-plane serve` as a child process. The helper lives in scripts/support
 * so the chaos soak (a script, which never imports from test/) shares it; here
 * it is bound by the suite's hang bound.
 */
import { within } from '../../scripts/support/control-plane-process.js';
import { HANG_BOUND_MS } from './wait.js';

export { ControlPlaneProcess, type ControlPlaneProcessOptions, type ProcessExit } from '../../scripts/support/control-plane-process.js';

/** Resolves or rejects as `promise` does, or fails naming `what` after the hang bound. */
export function withinHangBound<T>(promise: Promise<T>, what: string, boundMs = HANG_BOUND_MS): Promise<T> {
  return within(promise, what, boundMs);
}
