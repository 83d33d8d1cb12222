/**
 * Every AdminService list call serves pages of at most 1,000 entries over real
 * gRPC, however large the page_size asked for (the largest uint32 included),
 * and hands out a token for the rest: no call lists "everything".
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_PAGE_SIZE } from '../../control-plane/services/convert.js';
import { call, Harness } from '../support/harness.js';
import { agent, host } from '../support/store-records.js';

const LARGEST_UINT32 = 2 ** 32 - 1;

describe('AdminService page sizes', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('caps ListHosts, ListAgents and ListMessages at the documented maximum', async () => {
    harness = await Harness.start();
    const h = harness;
    const count = MAX_PAGE_SIZE + 1;
    for (let i = 0; i < count; i++) {
      const id = `h-${String(i).padStart(5, '0')}`;
      await h.store.insertHost(host(id));
      // Pending with no host and no connected host to place them on: nothing acts on them.
      await h.store.insertAgent(agent(`a-${String(i).padStart(5, '0')}`, { state: 'pending', hostId: '', hostLabels: [] }));
    }
    const payloads = Array.from({ length: count }, (_, i) => ({ payload: Buffer.from(`m${i}`), contentType: 'text/plain', idempotencyKey: '' }));
    // Two calls: one send takes at most 1,000 messages.
    await call(h.admin.sendMessages.bind(h.admin), { agentId: 'a-00000', messages: payloads.slice(0, 500) });
    await call(h.admin.sendMessages.bind(h.admin), { agentId: 'a-00000', messages: payloads.slice(500) });

    const hosts = await call(h.admin.listHosts.bind(h.admin), { pageSize: LARGEST_UINT32, pageToken: '' });
    expect(hosts.hosts).toHaveLength(MAX_PAGE_SIZE);
    expect(hosts.nextPageToken).not.toBe('');
    const restOfHosts = await call(h.admin.listHosts.bind(h.admin), { pageSize: LARGEST_UINT32, pageToken: hosts.nextPageToken });
    expect(restOfHosts.hosts.map((x) => x.hostId)).toEqual([`h-${String(MAX_PAGE_SIZE).padStart(5, '0')}`]);

    const agents = await call(h.admin.listAgents.bind(h.admin), { pageSize: LARGEST_UINT32, pageToken: '', hostId: '' });
    expect(agents.agents).toHaveLength(MAX_PAGE_SIZE);
    expect(agents.nextPageToken).not.toBe('');

    const messages = await call(h.admin.listMessages.bind(h.admin), { agentId: 'a-00000', state: 'pending', pageSize: LARGEST_UINT32, pageToken: '' });
    expect(messages.messages).toHaveLength(MAX_PAGE_SIZE);
    const restOfMessages = await call(h.admin.listMessages.bind(h.admin), { agentId: 'a-00000', state: 'pending', pageSize: LARGEST_UINT32, pageToken: messages.nextPageToken });
    expect(restOfMessages.messages).toHaveLength(1);
    expect(restOfMessages.nextPageToken).toBe('');

    // page_size 0 is the default page, not an empty one.
    expect((await call(h.admin.listAgents.bind(h.admin), { pageSize: 0, pageToken: '', hostId: '' })).agents).toHaveLength(100);
  });
});
