import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../common/errors.js';
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, pageSize } from '../../../control-plane/services/convert.js';

describe('pageSize', () => {
  // [page_size asked, page served]
  const served: [number, number][] = [
    [0, DEFAULT_PAGE_SIZE],
    [1, 1],
    [999, 999],
    [MAX_PAGE_SIZE, MAX_PAGE_SIZE],
    [MAX_PAGE_SIZE + 1, MAX_PAGE_SIZE],
    // The largest uint32 the wire can carry: capped, not "everything".
    [2 ** 32 - 1, MAX_PAGE_SIZE],
  ];
  it.each(served)('page_size %d lists %d at most', (asked, limit) => {
    expect(pageSize(asked)).toBe(limit);
  });

  // A negative LIMIT is no limit at all to SQLite: each of these would list everything.
  it.each([-1, -1_000, Number.MIN_SAFE_INTEGER, 1.5, Number.NaN, Number.POSITIVE_INFINITY])('refuses page_size %d with InvalidArgumentError', (asked) => {
    expect(() => pageSize(asked)).toThrow(InvalidArgumentError);
  });

  it('documents a maximum of 1,000 and a default of 100', () => {
    expect(MAX_PAGE_SIZE).toBe(1_000);
    expect(DEFAULT_PAGE_SIZE).toBe(100);
  });
});
