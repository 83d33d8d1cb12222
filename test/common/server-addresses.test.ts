/** The `--server` list: split, checked entry by entry with an error naming the bad one, and shuffled without loss. */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../common/errors.js';
import { MAX_SERVER_ADDRESSES, parseServerAddresses, shuffledAddresses } from '../../common/server-addresses.js';

describe('parseServerAddresses', () => {
  it.each([
    ['127.0.0.1:7443', ['127.0.0.1:7443']],
    ['a.example:7443,b.example:7443', ['a.example:7443', 'b.example:7443']],
    [' a:1 , b:2 ', ['a:1', 'b:2']],
    ['[::1]:7443,localhost:1', ['[::1]:7443', 'localhost:1']],
    ['dns:a:1,dns:///b:2', ['dns:a:1', 'dns:///b:2']],
  ])('accepts %j', (list, expected) => {
    expect(parseServerAddresses(list)).toEqual(expected);
  });

  it.each([
    ['', 'the address is empty'],
    ['a:1,', 'address 2 of 2 is empty'],
    [',a:1', 'address 1 of 2 is empty'],
    ['a:1,,b:2', 'address 2 of 3 is empty'],
    ['a:1,b', 'address 2 of 2 must be host:port (or [ipv6]:port), got b'],
    ['a:1,b:x', 'address 2 of 2 must be host:port'],
    ['a b:1', 'the address must be host:port'],
    ['a:0', 'the address has port 0, not in 1-65535'],
    ['a:70000', 'the address has port 70000, not in 1-65535'],
    ['a:1,a:1', 'address 2 of 2 repeats a:1'],
    ['ipv4:127.0.0.1:1', 'the address must be host:port'],
    [Array.from({ length: MAX_SERVER_ADDRESSES + 1 }, (_, i) => `h${String(i)}:1`).join(','), `at most ${String(MAX_SERVER_ADDRESSES)} addresses`],
  ])('refuses %j', (list, message) => {
    expect(() => parseServerAddresses(list)).toThrow(InvalidArgumentError);
    expect(() => parseServerAddresses(list)).toThrow(message);
  });
});

describe('shuffledAddresses', () => {
  it('keeps every address once, whatever the draws (out of range or NaN included)', () => {
    const addresses = ['a:1', 'b:2', 'c:3', 'd:4'];
    for (const draw of [0, 0.5, 0.999_999, 1, -3, Number.NaN]) {
      expect([...shuffledAddresses(addresses, () => draw)].sort()).toEqual(addresses);
    }
  });

  it('depends on the draws', () => {
    const addresses = ['a:1', 'b:2', 'c:3'];
    expect(shuffledAddresses(addresses, () => 0)).not.toEqual(shuffledAddresses(addresses, () => 0.999));
  });
});
