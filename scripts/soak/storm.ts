/**
 * The soak's reconnect storm (`--storm-hosts N`): N hosts in this process, each
 * on a connection of its own, all through one fault proxy, each running one
 * agent, lose the control plane at once and come back. Checked as the suite's
 * storm test is (every host back, its agent resumed, not started again; admin
 * calls answered throughout), at a scale the suite cannot afford.
 */
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import { SystemClock } from '../../common/clock.js';
import type { Logger } from '../../common/logger.js';
import type { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { unary, waitFor } from './waiting.js';

/** Options of {@link runStorm}. */
export interface StormOptions {
  hosts: number;
  controlPlanePort: number;
  admin: AdminServiceClient;
  logger: Logger;
  /** Bound on each phase (setting up, the storm itself, tearing down): only catches a hang. */
  boundMs: number;
}

/** What the storm showed. */
export interface StormResult {
  hosts: number;
  back: number;
  agentsStartedAgain: number;
  incarnationsChanged: number;
  adminCalls: number;
  adminFailures: number;
  reconnectMs: { min: number; median: number; max: number };
  problems: string[];
}

/** Hosts (and agents) set up at once. */
const CONCURRENCY = 50;
/** ListHosts rounds during the storm, at most. */
const MAX_ADMIN_ROUNDS = 10_000;

/** Runs the storm; always tears down what it started. */
export async function runStorm(options: StormOptions): Promise<StormResult> {
  const { admin, boundMs } = options;
  const clock = new SystemClock();
  const proxy = await FaultProxy.start({ targetPort: options.controlPlanePort });
  const hosts: { host: AgentHost; hostId: string; agentId: string }[] = [];
  const problems: string[] = [];
  try {
    for (let start = 0; start < options.hosts; start += CONCURRENCY) {
      const batch = Array.from({ length: Math.min(CONCURRENCY, options.hosts - start) }, async (_, k) => {
        const i = start + k;
        const enrolled = await unary(admin.enrollHost.bind(admin), { name: `storm-${i}`, joinTtlMs: 0 }, boundMs);
        const host = AgentHost.start({
          target: proxy.target,
          clock,
          logger: options.logger,
          credentialStore: new MemoryHostCredentialStore(),
          joinToken: enrolled.joinToken,
          modules: new Map([['idle', () => ({})]]),
          channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
        });
        hosts.push({ host, hostId: enrolled.hostId, agentId: `storm-agent-${i}` });
        await waitFor(() => host.state === 'connected', `storm host ${i} to connect`, boundMs);
        const started = new Promise<void>((resolve) => host.events.once('agent-started', () => resolve()));
        await unary(
          admin.dispatchAgent.bind(admin),
          { agentId: `storm-agent-${i}`, name: `storm-agent-${i}`, hostId: enrolled.hostId, hostLabels: [], spec: { kind: 'module', module: 'idle', command: '', args: [], config: '' } },
          boundMs,
        );
        await started;
      });
      await Promise.all(batch);
    }
    const before = await stormIncarnations(admin, boundMs);

    const reconnectMs: number[] = [];
    let agentsStartedAgain = 0;
    const cutAtMs = performance.now();
    for (const { host } of hosts) {
      host.events.once('connected', () => reconnectMs.push(performance.now() - cutAtMs));
      host.events.on('agent-started', () => void agentsStartedAgain++);
    }
    proxy.cutAll();
    let isOver = false;
    let adminCalls = 0;
    let adminFailures = 0;
    const adminLoop = (async (): Promise<void> => {
      for (let round = 0; !isOver && round < MAX_ADMIN_ROUNDS; round++) {
        let pageToken = '';
        for (let page = 0; page < 1_000; page++) {
          adminCalls++;
          try {
            const listed = await unary(admin.listHosts.bind(admin), { pageSize: 500, pageToken }, boundMs);
            pageToken = listed.nextPageToken;
          } catch {
            adminFailures++;
            break;
          }
          if (pageToken === '') break;
        }
      }
    })();
    try {
      await waitFor(() => reconnectMs.length === hosts.length && hosts.every(({ host }) => host.state === 'connected'), `all ${hosts.length} storm hosts back`, boundMs);
    } catch (err) {
      problems.push(err instanceof Error ? err.message : String(err));
    }
    isOver = true;
    await adminLoop;

    const after = await stormIncarnations(admin, boundMs);
    let incarnationsChanged = 0;
    for (const [agentId, incarnation] of before) if (after.get(agentId) !== incarnation) incarnationsChanged++;
    for (const { host, agentId } of hosts) {
      if (host.agentIds().join() !== agentId) problems.push(`storm host of ${agentId} runs [${host.agentIds().join(', ')}]`);
    }
    const sorted = [...reconnectMs].sort((a, b) => a - b);
    return {
      hosts: hosts.length,
      back: reconnectMs.length,
      agentsStartedAgain,
      incarnationsChanged,
      adminCalls,
      adminFailures,
      reconnectMs: {
        min: Math.round(sorted[0] ?? Number.NaN),
        median: Math.round(sorted[Math.floor(sorted.length / 2)] ?? Number.NaN),
        max: Math.round(sorted.at(-1) ?? Number.NaN),
      },
      problems: problems.slice(0, 20),
    };
  } finally {
    for (let start = 0; start < hosts.length; start += CONCURRENCY) {
      await Promise.all(hosts.slice(start, start + CONCURRENCY).map(({ host }) => host.close()));
    }
    await proxy.close();
  }
}

/** The storm agents' incarnations, as the control plane has them. */
async function stormIncarnations(admin: AdminServiceClient, boundMs: number): Promise<Map<string, number>> {
  const result = new Map<string, number>();
  let pageToken = '';
  for (let page = 0; page < 10_000; page++) {
    const listed = await unary(admin.listAgents.bind(admin), { pageSize: 500, pageToken, hostId: '' }, boundMs);
    for (const agent of listed.agents) if (agent.agentId.startsWith('storm-agent-')) result.set(agent.agentId, agent.incarnation);
    pageToken = listed.nextPageToken;
    if (pageToken === '') return result;
  }
  throw new Error('more pages of agents than there can be');
}

