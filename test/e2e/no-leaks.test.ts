import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import type { AgentModule } from '../../agent-host/tools/agent-module.js';
import { DEFAULT_POSTGRES_POOL_SIZE } from '../../control-plane/store/postgres-store.js';
import { call, Harness } from '../support/harness.js';
import { isPostgresTestRun } from '../support/test-store.js';
import { waitUntil } from '../support/wait.js';

/**
 * The second defect Tether exists to prevent: a registry that never forgets
 * (ARCHITECTURE.md, "Why it exists"). A thousand agents come and go on one
 * host; afterwards nothing of theirs may be reachable, no handle or timer of
 * theirs may be left, and the control plane's verifier cache holds none of
 * their tokens.
 */

const AGENTS = 1_000;
const CONCURRENCY = 50;
/**
 * The production heartbeat interval: a heartbeat's deadline is min(interval, TTL/10) of real time,
 * and a thousand at once on a busy machine need more than the harness's 3 s.
 */
const HEARTBEAT_INTERVAL_MS = 30_000;

/** Runs `task` over `items`, at most `limit` at a time. */
async function inBatches<T>(items: readonly T[], limit: number, task: (item: T) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < items.length; i += limit) {
    await Promise.all(items.slice(i, i + limit).map(task));
  }
}

/** `process.getActiveResourcesInfo()` counted by type. */
function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const type of process.getActiveResourcesInfo()) counts[type] = (counts[type] ?? 0) + 1;
  return counts;
}

/** A full collection; vitest.config.ts runs the workers with --expose-gc. */
function forceGc(): void {
  const gc = globalThis.gc;
  if (gc === undefined) throw new Error('run with --expose-gc (vitest.config.ts execArgv)');
  gc();
}

/**
 * A WeakRef's target is kept alive until the end of the job that created or
 * dereferenced it, so collections are forced from a fresh macrotask.
 */
const nextMacrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('no leaks', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it(`forgets ${AGENTS} module agents once they are stopped`, async () => {
    harness = await Harness.start({ heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS });
    const h = harness;
    // Only weak references leave the module and the event handlers: a strong one would be the defect itself.
    // The read-only view stands for the agent's CredentialHolder: the holder keeps its view, so the
    // view cannot be collected while the holder is reachable. The context and its AgentClient stand
    // for what tools are given (the original registry held tool clients).
    const refs = new Map<string, WeakRef<object>[]>();
    const remember = (agentId: string, target: object): void => {
      const list = refs.get(agentId) ?? [];
      list.push(new WeakRef(target));
      refs.set(agentId, list);
    };
    const probe: AgentModule = (context) => {
      remember(context.agentId, context);
      remember(context.agentId, context.agent);
      // Like any real agent, its instance holds on to its context for as long as it runs.
      return {
        onMessage: () => Promise.resolve(void context.credentials.get()),
        close: () => Promise.resolve(),
      };
    };
    let agentsChannel: grpc.Channel | undefined;
    const { host, hostId } = await h.startHost('leaky', {
      capacity: 0,
      modules: new Map([['probe', probe]]),
      channelFactory: (target, credentials, options, purpose) => {
        const channel = new grpc.Channel(target, credentials, options);
        if (purpose === 'agents') agentsChannel = channel;
        return channel;
      },
    });
    // The host's second connection, the agents' own (the stream has one per attempt), is part of the
    // baseline: it is the host's, made once, not any agent's.
    await waitUntil(() => agentsChannel?.getConnectivityState(true) === grpc.connectivityState.READY, "the agents' channel connected");
    const agentIds = Array.from({ length: AGENTS }, (_, i) => `leak-${String(i).padStart(4, '0')}`);

    const started = new Set<string>();
    const stopped = new Set<string>();
    const beats = new Set<string>();
    const onStarted = (e: { agentId: string; credentials: object }): void => {
      remember(e.agentId, e.credentials);
      started.add(e.agentId);
    };
    const onStopped = (e: { agentId: string }): void => void stopped.add(e.agentId);
    const onBeat = (e: { agentId: string; isOk: boolean }): void => {
      if (e.isOk) beats.add(e.agentId);
    };
    host.events.on('agent-started', onStarted);
    host.events.on('agent-stopped', onStopped);
    host.events.on('heartbeat', onBeat);
    onTestFinished(() => {
      host.events.off('agent-started', onStarted);
      host.events.off('agent-stopped', onStopped);
      host.events.off('heartbeat', onBeat);
    });

    if (isPostgresTestRun()) {
      // The PostgreSQL store's pool opens connections as load needs them, up to its size, and keeps them
      // idle a while: opened to its size before the baseline, so its sockets are no growth.
      await Promise.all(Array.from({ length: DEFAULT_POSTGRES_POOL_SIZE }, () => h.store.countAgentsByState()));
    }
    await nextMacrotask();
    forceGc();
    const baseline = activeResources();
    const baselineCacheEntries = h.cp.verifierCacheEntries;

    await inBatches(agentIds, CONCURRENCY, (agentId) =>
      call(h.admin.dispatchAgent.bind(h.admin), {
        agentId,
        name: agentId,
        hostId,
        hostLabels: [],
        spec: { kind: 'module', module: 'probe', command: '', args: [], config: '' },
      }),
    );
    await waitUntil(() => started.size === AGENTS, `${AGENTS} agents started`);
    // The control plane handles the hosts' started events one after another, well after the host sent them:
    // measured before it caught up, its work in progress would pass for a leak.
    await waitUntil(async () => (await h.store.countAgentsByState()).get('running') === AGENTS, `${AGENTS} agents running on the control plane`);
    expect(host.agentIds()).toHaveLength(AGENTS);
    expect([...refs.values()].map((list) => list.length)).toEqual(Array.from({ length: AGENTS }, () => 3));

    // Every agent calls the control plane once, so each has a token in the verifier cache.
    h.clock.advance(HEARTBEAT_INTERVAL_MS);
    await waitUntil(() => beats.size === AGENTS, `${AGENTS} agents heartbeating`);
    expect(h.cp.verifierCacheEntries).toBe(baselineCacheEntries + AGENTS);

    await inBatches(agentIds, CONCURRENCY, (agentId) => call(h.admin.stopAgent.bind(h.admin), { agentId, reason: 'leak test' }));
    await waitUntil(() => stopped.size === AGENTS, `${AGENTS} agents stopped`);
    expect(host.agentIds()).toEqual([]);
    expect(h.cp.verifierCacheEntries).toBe(baselineCacheEntries);

    await nextMacrotask();
    forceGc();
    const alive = [...refs].filter(([, list]) => list.some((ref) => ref.deref() !== undefined)).map(([agentId]) => agentId);
    expect(alive, `${alive.length} stopped agents are still reachable`).toEqual([]);

    // A leak is a surplus over the baseline; a timer or immediate that was in flight when the baseline was taken may be gone now.
    let surplus = surplusOver(baseline, activeResources());
    await waitUntil(async () => {
      await nextMacrotask();
      forceGc();
      surplus = surplusOver(baseline, activeResources());
      return surplus.length === 0;
    }, 'active resources back to the baseline').catch(() => undefined);
    expect(surplus).toEqual([]);
  });
});

/** Resource types of which `current` holds more than `baseline`, with how many more, by name. */
function surplusOver(baseline: Record<string, number>, current: Record<string, number>): [string, number][] {
  return Object.entries(current)
    .map(([type, count]): [string, number] => [type, count - (baseline[type] ?? 0)])
    .filter(([, extra]) => extra > 0)
    .sort(([a], [b]) => a.localeCompare(b));
}
