/**
 * The placement rule as a table: a named host or, by labels, the least loaded
 * schedulable host with room. Each row would pass with the wrong rule somewhere
 * (no label filter, no capacity check, no tie-break, most loaded first).
 */
import { describe, expect, it } from 'vitest';
import { choosePlacement, decidePlacement, type PlacementCandidate, type PlacementConstraint } from '../../../control-plane/agents/placement.js';

const gpu = { key: 'gpu', value: 'a100' };
const zoneA = { key: 'zone', value: 'a' };
const zoneB = { key: 'zone', value: 'b' };

function host(hostId: string, patch: Partial<PlacementCandidate> = {}): PlacementCandidate {
  return { hostId, labels: [], capacity: 0, load: 0, isConnected: true, isSchedulable: true, ...patch };
}

const anyHost: PlacementConstraint = { hostId: null, labels: [] };

describe('choosePlacement', () => {
  const rows: { name: string; candidates: PlacementCandidate[]; constraint: PlacementConstraint; chosen: string | undefined }[] = [
    { name: 'no hosts: none', candidates: [], constraint: anyHost, chosen: undefined },
    { name: 'the least loaded host', candidates: [host('h1', { load: 3 }), host('h2', { load: 1 }), host('h3', { load: 2 })], constraint: anyHost, chosen: 'h2' },
    { name: 'a tie goes to the smallest host id, whatever the order', candidates: [host('h3', { load: 1 }), host('h1', { load: 1 }), host('h2', { load: 1 })], constraint: anyHost, chosen: 'h1' },
    // Capacity.
    { name: 'a full host is passed over for a busier one with room', candidates: [host('h1', { load: 2, capacity: 2 }), host('h2', { load: 5, capacity: 10 })], constraint: anyHost, chosen: 'h2' },
    { name: 'every host full: none', candidates: [host('h1', { load: 2, capacity: 2 }), host('h2', { load: 3, capacity: 1 })], constraint: anyHost, chosen: undefined },
    { name: 'one place left is a place', candidates: [host('h1', { load: 1, capacity: 2 })], constraint: anyHost, chosen: 'h1' },
    { name: 'capacity 0 means no limit', candidates: [host('h1', { load: 10_000, capacity: 0 })], constraint: anyHost, chosen: 'h1' },
    // Labels.
    {
      name: 'only hosts carrying the wanted label, even when busier',
      candidates: [host('h1', { labels: [zoneB] }), host('h2', { labels: [zoneA], load: 7 })],
      constraint: { hostId: null, labels: [zoneA] },
      chosen: 'h2',
    },
    {
      name: 'every wanted label, not just one',
      candidates: [host('h1', { labels: [zoneA] }), host('h2', { labels: [gpu] }), host('h3', { labels: [gpu, zoneA], load: 4 })],
      constraint: { hostId: null, labels: [zoneA, gpu] },
      chosen: 'h3',
    },
    {
      name: 'a label with the same key and another value does not match',
      candidates: [host('h1', { labels: [zoneB] })],
      constraint: { hostId: null, labels: [zoneA] },
      chosen: undefined,
    },
    {
      name: 'a host with no labels does not match a wanted label',
      candidates: [host('h1')],
      constraint: { hostId: null, labels: [gpu] },
      chosen: undefined,
    },
    {
      name: 'labelled hosts all full: none, though an unlabelled host has room',
      candidates: [host('h1', { labels: [gpu], load: 1, capacity: 1 }), host('h2', { load: 0, capacity: 5 })],
      constraint: { hostId: null, labels: [gpu] },
      chosen: undefined,
    },
    { name: 'no wanted labels: any host', candidates: [host('h1', { labels: [gpu], load: 1 }), host('h2', { load: 2 })], constraint: anyHost, chosen: 'h1' },
    // Connected, schedulable (not cordoned), able to run the spec.
    { name: 'an unschedulable host is passed over', candidates: [host('h1', { isSchedulable: false }), host('h2', { load: 9 })], constraint: anyHost, chosen: 'h2' },
    { name: 'a disconnected host is passed over, however empty', candidates: [host('h1', { isConnected: false }), host('h2', { load: 9 })], constraint: anyHost, chosen: 'h2' },
    {
      name: 'a host that cannot run the spec is passed over',
      candidates: [host('h1', { unsupportedReason: 'module x is not registered' }), host('h2', { load: 9 })],
      constraint: anyHost,
      chosen: 'h2',
    },
    {
      name: 'a cordoned host with the label and room is passed over: none',
      candidates: [host('h1', { labels: [gpu], isSchedulable: false }), host('h2', { load: 0 })],
      constraint: { hostId: null, labels: [gpu] },
      chosen: undefined,
    },
    { name: 'a named host that is cordoned: none', candidates: [host('h1', { isSchedulable: false }), host('h2')], constraint: { hostId: 'h1', labels: [] }, chosen: undefined },
    { name: 'a named host that is disconnected: none', candidates: [host('h1', { isConnected: false }), host('h2')], constraint: { hostId: 'h1', labels: [] }, chosen: undefined },
    // A named host.
    { name: 'a named host, though others are less loaded', candidates: [host('h1', { load: 5 }), host('h2')], constraint: { hostId: 'h1', labels: [] }, chosen: 'h1' },
    { name: 'a named host that is full: none, not another', candidates: [host('h1', { load: 2, capacity: 2 }), host('h2')], constraint: { hostId: 'h1', labels: [] }, chosen: undefined },
    { name: 'a named host not connected: none, not another', candidates: [host('h2')], constraint: { hostId: 'h1', labels: [] }, chosen: undefined },
    {
      name: 'a named host that cannot run the agent: none',
      candidates: [host('h1', { unsupportedReason: 'command /bin/x is not allowed' }), host('h2')],
      constraint: { hostId: 'h1', labels: [] },
      chosen: undefined,
    },
  ];

  it.each(rows)('$name', ({ candidates, constraint, chosen }) => {
    expect(choosePlacement(candidates, constraint)).toBe(chosen);
  });
});

describe('decidePlacement: why an agent stays pending', () => {
  const rows: { name: string; candidates: PlacementCandidate[]; constraint: PlacementConstraint; reason: string }[] = [
    { name: 'no host at all', candidates: [], constraint: anyHost, reason: 'no host is connected' },
    { name: 'only disconnected hosts', candidates: [host('h1', { isConnected: false })], constraint: anyHost, reason: 'no host is connected' },
    { name: 'the named host absent', candidates: [host('h2')], constraint: { hostId: 'h1', labels: [] }, reason: 'host h1 is not connected' },
    { name: 'the named host cordoned', candidates: [host('h1', { isSchedulable: false })], constraint: { hostId: 'h1', labels: [] }, reason: 'host h1 is cordoned (not schedulable)' },
    {
      name: 'the named host full',
      candidates: [host('h1', { load: 2, capacity: 2 })],
      constraint: { hostId: 'h1', labels: [] },
      reason: 'host h1 is full (2 of 2 agents)',
    },
    {
      name: 'the named host lacks the module',
      candidates: [host('h1', { unsupportedReason: 'module x is not registered on the host' })],
      constraint: { hostId: 'h1', labels: [] },
      reason: 'host h1 cannot run it: module x is not registered on the host',
    },
    { name: 'no host carries the labels', candidates: [host('h1', { labels: [zoneB] })], constraint: { hostId: null, labels: [zoneA, gpu] }, reason: 'no connected host carries zone=a,gpu=a100' },
    {
      name: 'hosts with the labels, each turned away for its own reason',
      candidates: [
        host('h1', { labels: [zoneA], load: 1, capacity: 1 }),
        host('h2', { labels: [zoneA], isSchedulable: false }),
        host('h3', { labels: [zoneA], load: 3, capacity: 3 }),
        host('h4', { labels: [zoneB] }),
      ],
      constraint: { hostId: null, labels: [zoneA] },
      reason: 'no connected host carrying zone=a can take it (2 full, 1 cordoned)',
    },
  ];

  it.each(rows)('$name', ({ candidates, constraint, reason }) => {
    expect(decidePlacement(candidates, constraint)).toEqual({ outcome: 'pending', reason });
  });

  it('says where it placed the agent and why', () => {
    expect(decidePlacement([host('h1', { labels: [gpu], load: 2 }), host('h2', { labels: [gpu], load: 1 })], { hostId: null, labels: [gpu] })).toEqual({
      outcome: 'placed',
      hostId: 'h2',
      reason: 'placed on the least loaded host carrying gpu=a100 (load 1)',
    });
  });
});
