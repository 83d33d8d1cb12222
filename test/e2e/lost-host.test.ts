/**
 * Lost hosts (issue 15): a host cut off past the grace fences itself, its
 * ensured agents start on another host under a new incarnation only once the
 * old one is fenced and its last token has expired, and receive their waiting
 * mail in order; a control plane back from a long downtime gives every host
 * the whole grace to reconnect.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import type { ReadOnlyCredentials } from '../../agent-host/tools/credential-source.js';
import { ControlPlane } from '../../control-plane/control-plane.js';
import { AgentState } from '../../gen/tether/v1/common.js';
import { advanceUntil } from '../support/advance-until.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { bearer, call, Harness, statusOf } from '../support/harness.js';
import { waitUntil } from '../support/wait.js';

const AGENT_TTL_MS = 60_000;
const TOLERANCE_MS = 1_000;
/** The least allowed: a third of the TTL plus the tolerance. */
const GRACE_MS = AGENT_TTL_MS / 3 + TOLERANCE_MS;
const SPEC = { kind: 'module', module: 'mail', command: '', args: [], config: '' };

describe('lost hosts', () => {
  let harness: Harness | undefined;
  const proxies: FaultProxy[] = [];

  afterEach(async () => {
    // Proxies first: a host behind a blackhole would wait on its dead stream.
    for (const p of proxies.splice(0)) await p.close();
    await harness?.close();
    harness = undefined;
  });

  it('refuses a grace shorter than TTL/3 plus the clock tolerance, naming both flags', async () => {
    const h = await Harness.start();
    harness = h;
    await expect(
      ControlPlane.start({ store: h.store, clock: h.clock, logger: h.logs.logger, adminToken: h.adminToken, address: '127.0.0.1:0', agentTokenTtlMs: AGENT_TTL_MS, clockToleranceMs: TOLERANCE_MS, lostHostGraceMs: GRACE_MS - 1 }),
    ).rejects.toThrow(/--lost-host-grace.*--agent-token-ttl.*--clock-tolerance/);
  });

  it('a host cut off past the grace fences itself; its ensured agent runs elsewhere with a new incarnation, gets its mail in order, and old tokens are refused', async () => {
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, clockToleranceMs: TOLERANCE_MS, pingIntervalMs: 2_000 });
    const h = harness;
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    const received: { host: string; seq: number; text: string }[] = [];
    const credentials = new Map<string, ReadOnlyCredentials>();
    const mail = (host: string): AgentModule => (context) => {
      credentials.set(host, context.credentials);
      return {
        onMessage: (message) => {
          received.push({ host, seq: message.seq, text: Buffer.from(message.payload).toString() });
          return Promise.resolve();
        },
      };
    };
    const a = await h.startHost('a', { target: proxy.target, isSelfFenceEnabled: true, modules: new Map([['mail', mail('a')]]) });
    const events: string[] = [];
    a.host.events.on('self-fenced', () => events.push('a self-fenced'));
    await call(h.admin.ensureAgent.bind(h.admin), { agentId: 'mover', name: '', hostId: '', hostLabels: [], spec: SPEC, update: false });
    await waitUntil(() => a.host.agentIds().includes('mover'), 'the agent running on a');
    const send = (text: string): Promise<unknown> =>
      call(h.admin.sendMessages.bind(h.admin), { agentId: 'mover', messages: [{ contentType: 'text/plain', payload: Buffer.from(text), idempotencyKey: '' }] });
    await send('m1');
    await waitUntil(() => received.length === 1, 'm1 taken on a');
    const oldToken = credentials.get('a')?.get() ?? '';
    expect(oldToken).not.toBe('');
    const b = await h.startHost('b', { isSelfFenceEnabled: true, modules: new Map([['mail', mail('b')]]) });
    b.host.events.on('agent-started', (e) => events.push(`b started ${e.agentId}`));

    // Cut off: nothing passes either way; the control plane sees the stream end, the host does not.
    proxy.blackhole();
    proxy.cutAll();
    await waitUntil(() => h.cp.connectedHosts === 1, 'the control plane to see a gone');
    for (const text of ['m2', 'm3', 'm4']) await send(text);

    await advanceUntil(h.clock, 500, async () => {
      const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId: 'mover' });
      return agent?.state === AgentState.AGENT_STATE_RUNNING && agent.hostId === b.hostId;
    }, 'the agent running on b');

    // a fenced itself before b started the agent; a no longer runs it.
    expect(events).toEqual(['a self-fenced', 'b started mover']);
    expect(a.host.agentIds()).toEqual([]);
    const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId: 'mover' });
    expect(agent?.incarnation).toBeGreaterThan(1);
    // The waiting mail follows it, in order, and nothing taken on a is given again.
    await waitUntil(() => received.length === 4, 'm2..m4 taken on b');
    expect(received.map((r) => `${r.host}:${r.text}`)).toEqual(['a:m1', 'b:m2', 'b:m3', 'b:m4']);
    // The old incarnation's token is refused; the new one's is not.
    const api = h.agentClient();
    expect(await statusOf(call(api.heartbeat.bind(api), { agentId: 'mover' }, bearer(oldToken)))).not.toBe('ok');
    expect(await statusOf(call(api.heartbeat.bind(api), { agentId: 'mover' }, bearer(credentials.get('b')?.get() ?? '')))).toBe('ok');
    // Its history says why.
    const described = await call(h.admin.describeAgent.bind(h.admin), { agentId: 'mover' });
    const reasons = described.transitions.map((t) => t.reason).join('\n');
    expect(reasons).toMatch(/its host .* was lost/);
    expect(reasons).toMatch(/fenced/);
    expect(h.logs.records().some((r) => String(r.msg).includes('fencing this host'))).toBe(true);
  });

  it('counts the grace from the host\'s last message, not from when keepalive noticed the silent link', async () => {
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, clockToleranceMs: TOLERANCE_MS, keepaliveTimeMs: 1_000, keepaliveTimeoutMs: 1_000 });
    const h = harness;
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    const { hostId } = await h.startHost('silent', { target: proxy.target, keepaliveTimeMs: 1_000, keepaliveTimeoutMs: 1_000 });
    // Silent from here (the fake clock stands still until the blackhole: nothing the host sends later gets through).
    const lastContactMs = h.clock.now();
    proxy.blackhole();
    // Most of the grace passes on our clock before the transport notices (keepalive runs on the real clock).
    const SILENT_BEFORE_NOTICED_MS = GRACE_MS - 4_000;
    h.clock.advance(SILENT_BEFORE_NOTICED_MS);
    const gone = new Promise<{ lastContactMs: number }>((resolve) => h.cp.events.once('host-disconnected', resolve));
    await waitUntil(() => h.cp.connectedHosts === 0, 'the control plane to notice the silent link');
    expect((await gone).lastContactMs).toBe(lastContactMs);
    const noticedAtMs = h.clock.now();
    let lostAtMs: number | undefined;
    h.cp.events.on('host-lost', (e) => {
      if (e.hostId === hostId) lostAtMs = h.clock.now();
    });
    await advanceUntil(h.clock, 250, () => lostAtMs !== undefined, 'the host to be declared lost');
    // Lost once the grace has passed since its last message: well before a whole grace after the notice.
    expect(lostAtMs).toBeGreaterThanOrEqual(lastContactMs + GRACE_MS);
    expect(lostAtMs).toBeLessThan(noticedAtMs + GRACE_MS - 2_000);
  });

  it('a control plane back after a long downtime declares no host lost that reconnects within the grace', async () => {
    harness = await Harness.start({ agentTokenTtlMs: AGENT_TTL_MS, clockToleranceMs: TOLERANCE_MS });
    const h = harness;
    const proxy = await FaultProxy.start({ targetPort: h.cp.port });
    proxies.push(proxy);
    const { host, hostId } = await h.startHost('stays', { target: proxy.target, isSelfFenceEnabled: true });
    await call(h.admin.ensureAgent.bind(h.admin), { agentId: 'kept', name: '', hostId: '', hostLabels: [], spec: { ...SPEC, module: 'idle' }, update: false });
    await waitUntil(() => host.agentIds().includes('kept'), 'the agent running');
    await h.stopControlPlane();
    // Down far longer than the grace (but not than the agent's token).
    h.clock.advance(GRACE_MS * 2);
    await h.startControlPlane();
    const lost: string[] = [];
    h.cp.events.on('host-lost', (e) => lost.push(e.hostId));
    // Most of the grace passes, counted from the restart, before the host gets through.
    for (let step = 0; step < (GRACE_MS - 3_000) / 1_000; step++) {
      h.clock.advance(1_000);
      await new Promise((resolve) => setImmediate(resolve));
    }
    proxy.setTarget(h.cp.port);
    await advanceUntil(h.clock, 100, () => h.cp.connectedHosts === 1, 'the host to reconnect');
    expect(lost).toEqual([]);
    // It kept its place (the host may have fenced itself during the long downtime: then it runs again there).
    await advanceUntil(h.clock, 100, async () => {
      const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId: 'kept' });
      return agent?.state === AgentState.AGENT_STATE_RUNNING;
    }, 'the agent running');
    const { agent } = await call(h.admin.getAgent.bind(h.admin), { agentId: 'kept' });
    expect(agent?.hostId).toBe(hostId);
    const described = await call(h.admin.describeAgent.bind(h.admin), { agentId: 'kept' });
    expect(described.transitions.map((t) => t.reason).join('\n')).not.toMatch(/lost/);
  });
});
