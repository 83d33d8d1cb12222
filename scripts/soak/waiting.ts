/**
 * Waiting in the soak: on the real clock (the soak is the one place that runs
 * on it), every wait bounded so the soak always stops by itself.
 */
import * as grpc from '@grpc/grpc-js';
import { setTimeout as sleepMs } from 'node:timers/promises';

/** How often a condition is polled. */
const POLL_MS = 50;

/** Resolves once `predicate()` holds; fails naming `what` after `boundMs`. */
export async function waitFor(predicate: () => boolean | Promise<boolean>, what: string, boundMs: number): Promise<void> {
  const startedAtMs = performance.now();
  for (;;) {
    if (await predicate()) return;
    if (performance.now() - startedAtMs > boundMs) throw new Error(`timed out after ${boundMs} ms waiting for ${what}`);
    await sleepMs(POLL_MS);
  }
}

/** Sleeps `ms`, or less if `signal` aborts first. */
export async function pause(ms: number, signal?: AbortSignal): Promise<void> {
  try {
    await sleepMs(ms, undefined, signal === undefined ? undefined : { signal });
  } catch {
    // Aborted: the caller checks its signal.
  }
}

/** Resolves or rejects as `promise` does, or fails naming `what` after `boundMs`. */
export async function within<T>(promise: Promise<T>, what: string, boundMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${boundMs} ms waiting for ${what}`)), boundMs);
  });
  try {
    return await Promise.race([promise, bound]);
  } finally {
    clearTimeout(timer);
  }
}

/** One unary call with a deadline, waiting for the channel to be ready (so a retry never spins while the server is down). */
export function unary<Req, Res>(
  method: (request: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, callback: (err: grpc.ServiceError | null, response: Res) => void) => grpc.ClientUnaryCall,
  request: Req,
  deadlineMs: number,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, new grpc.Metadata({ waitForReady: true }), { deadline: Date.now() + deadlineMs }, (err, response) => (err === null ? resolve(response) : reject(err)));
  });
}

/** The gRPC status code of a failed call, if it was one. */
export function codeOf(err: unknown): grpc.status | undefined {
  return typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'number' ? (err as grpc.ServiceError).code : undefined;
}
