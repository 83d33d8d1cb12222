import type { Store } from '../../control-plane/store/store.js';

/** Calls made to a {@link countingStore}, by method, and the rows they answered with. */
export class StoreCalls {
  readonly byMethod = new Map<string, number>();
  /**
   * Rows each answer stood for: one per record or list item, and for a count
   * the rows counted (a count reads every row it counts).
   */
  rows = 0;

  /** Calls to `method` so far. */
  count(method: string): number {
    return this.byMethod.get(method) ?? 0;
  }

  /** Every call so far. */
  get total(): number {
    let total = 0;
    for (const n of this.byMethod.values()) total += n;
    return total;
  }

  /** Forgets everything counted so far. */
  reset(): void {
    this.byMethod.clear();
    this.rows = 0;
  }

  /** Calls by method, sorted by name (for comparing two runs). */
  snapshot(): Record<string, number> {
    return Object.fromEntries([...this.byMethod].sort(([a], [b]) => a.localeCompare(b)));
  }
}

/** Methods whose answer is what they wrote (ids added), not rows read: counted as calls, not rows. */
const ECHOING_WRITES: ReadonlySet<string> = new Set(['appendEvents']);

/** How many rows an answer stands for. */
function rowsOf(result: unknown): number {
  if (result === undefined || result === null) return 0;
  if (Array.isArray(result)) return result.length;
  if (result instanceof Map) {
    let rows = 0;
    for (const value of result.values()) rows += typeof value === 'number' ? value : 1;
    return rows;
  }
  if (typeof result === 'object' && 'items' in result && Array.isArray(result.items)) return result.items.length;
  return typeof result === 'object' ? 1 : 0;
}

/** A Store that passes every call to `store` and counts it in `calls`. */
export function countingStore(store: Store, calls: StoreCalls): Store {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function' || typeof property !== 'string') return value;
      return async (...args: unknown[]): Promise<unknown> => {
        calls.byMethod.set(property, calls.count(property) + 1);
        const result: unknown = await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        if (!ECHOING_WRITES.has(property)) calls.rows += rowsOf(result);
        return result;
      };
    },
  });
}
