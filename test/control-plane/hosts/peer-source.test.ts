import { describe, expect, it } from 'vitest';
import { peerSource } from '../../../control-plane/hosts/peer-source.js';

describe('peerSource', () => {
  // grpc-js writes `address:port`, IPv6 without brackets.
  it.each([
    ['127.0.0.2:41234', '127.0.0.2'],
    ['::ffff:127.0.0.2:41234', '127.0.0.2'],
    ['::1:5000', '0000:0000:0000:0000::/64'],
    ['[::1]:5000', '0000:0000:0000:0000::/64'],
    ['2001:db8:1:2:3:4:5:6:443', '2001:0db8:0001:0002::/64'],
    // Every address of one /64 is one source: a subscriber gets the whole /64 for free.
    ['2001:db8:1:2:ffff:ffff:ffff:ffff:443', '2001:0db8:0001:0002::/64'],
    ['2001:DB8::1:80', '2001:0db8:0000:0000::/64'],
    ['fe80::1', 'fe80:0000:0000:0000::/64'],
    ['64:ff9b::1.2.3.4:9', '0064:ff9b:0000:0000::/64'],
    ['unknown', 'unknown'],
    ['', 'unknown'],
  ])('%s counts as %s', (peer, source) => {
    expect(peerSource(peer)).toEqual({ connection: peer, source });
  });
});
