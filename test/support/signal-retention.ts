import { getEventListeners } from 'node:events';

/**
 * What keeps hold of an AbortSignal and is never released while the signal
 * lives. Node 20 gives no public way to see the dependants `AbortSignal.any`
 * registers on its sources (they are kept in an internal set that
 * `getEventListeners` does not show, and never pruned: 1M calls ≈ 60 MB), so
 * this reads that set by its symbol's description. On a Node without it the
 * dependant count is 0 and only listeners are counted.
 */
export interface SignalRetention {
  /** `abort` listeners attached. */
  listeners: number;
  /** Signals made by `AbortSignal.any` over this one. */
  dependants: number;
}

/** Listeners and `AbortSignal.any` dependants attached to `signal`. */
export function signalRetention(signal: AbortSignal): SignalRetention {
  return { listeners: getEventListeners(signal, 'abort').length, dependants: internalSet(signal, 'kDependantSignals')?.size ?? 0 };
}

/**
 * `signal` and, when `AbortSignal.any` made it, the signals it was made from
 * (which outlive it and are where dependants pile up).
 */
export function signalAndSources(signal: AbortSignal): AbortSignal[] {
  const found: AbortSignal[] = [signal];
  for (const ref of internalSet(signal, 'kSourceSignals') ?? []) {
    const source = (ref as { deref?: () => unknown }).deref?.();
    if (isAbortSignal(source)) found.push(source);
  }
  return found;
}

/**
 * Node's internal sets are `SafeSet`s of Node's own realm: `instanceof Set`
 * fails for them in a test context, so they are recognised by shape.
 */
function internalSet(signal: AbortSignal, description: string): { size: number; [Symbol.iterator](): Iterator<unknown> } | undefined {
  const symbol = Object.getOwnPropertySymbols(signal).find((s) => s.description === description);
  const value = (symbol === undefined ? undefined : (signal as unknown as Record<symbol, unknown>)[symbol]) as
    | { size?: unknown; [Symbol.iterator]?: unknown }
    | undefined;
  if (typeof value?.size !== 'number' || typeof value[Symbol.iterator] !== 'function') return undefined;
  return value as { size: number; [Symbol.iterator](): Iterator<unknown> };
}

function isAbortSignal(value: unknown): value is AbortSignal {
  return typeof value === 'object' && value !== null && typeof (value as { aborted?: unknown }).aborted === 'boolean' && 'addEventListener' in value;
}
