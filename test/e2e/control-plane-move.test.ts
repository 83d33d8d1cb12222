/**
 * Moving the control plane (issue 20, Show 3): a control plane on PostgreSQL
 * (a real `control-plane serve` child) serving 2 hosts × 10 agents under a
 * steady message load is SIGKILLed; a second one, with another (empty) data
 * directory, the same store URL and the same admin token (environment), starts
 * on another port. The hosts were given both addresses from the start, so they
 * find the second one and resume on it: every message answered OK reaches its
 * agent exactly once and in order, no agent is restarted (incarnation 1, its
 * module started once), and nothing is refused as UNAUTHENTICATED (heartbeats,
 * tool calls, the control planes' own refusal log).
 *
 * The second control plane's port is picked before anything starts (bind
 * 127.0.0.1:0, read it, close it): nothing listens there until the move, so
 * the hosts' tries at it are refused at once until it is up.
 */
import { EventEmitter } from 'node:events';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentHost } from '../../agent-host/agent-host.js';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import type { AgentClient } from '../../agent-host/tools/agent-client.js';
import type { AgentModule, DeliveredMessage } from '../../agent-host/tools/agent-module.js';
import { bearerInterceptor } from '../../agent-host/tools/call-credentials.js';
import { SystemClock } from '../../common/clock.js';
import { AdminServiceClient } from '../../gen/tether/v1/admin.js';
import { AgentState, type SendMessagesRequest, type SendMessagesResponse } from '../../gen/tether/v1/common.js';
import { ControlPlaneProcess, withinHangBound } from '../support/control-plane-process.js';
import { call } from '../support/harness.js';
import { LogCapture } from '../support/log-capture.js';
import { createTestSchema, isPostgresAvailable } from '../support/postgres.js';
import { assertNoSecrets } from '../support/secrets.js';
import { HANG_BOUND_MS, nextEvent, waitUntil } from '../support/wait.js';
import { freePort } from '../support/free-port.js';

const isAvailable = await isPostgresAvailable('the control-plane move (PostgreSQL)');

const HOSTS = 2;
const AGENTS_PER_HOST = 10;
const PER_AGENT = 150;
const BATCH = 10;
/** Messages a sender runs ahead of what its agent has received: the load is steady, and under way at the kill. */
const AHEAD = 30;
/** Every this many messages an agent makes a tool call (WhoAmI) as itself. */
const TOOL_CALL_EVERY = 15;
const MAX_SEND_ATTEMPTS = 20;
/** The hang bound for the whole run; it catches a hang, never a slow machine. */
const RUN_BOUND_MS = 150_000;
const TRANSIENT = new Set<grpc.status>([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);
/** Error names that would mean an agent's credential was refused somewhere. */
const AUTH_FAILURES = new Set(['UnauthenticatedError', 'TokenExpiredError', 'TokenRevokedError', 'PermissionDeniedError']);

/** What the agents got, per agent in arrival order, how often each module started, and what their tool calls met. */
class Recorder {
  readonly events = new EventEmitter<{ received: [{ agentId: string; count: number }] }>();
  readonly starts = new Map<string, number>();
  readonly clients = new Map<string, AgentClient>();
  readonly toolCalls = { ok: 0, failures: [] as string[] };
  readonly #byAgent = new Map<string, { seq: number; payload: string }[]>();
  #total = 0;
  #onTotal: { at: number; action: () => void } | undefined;

  readonly module: AgentModule = (context) => {
    this.starts.set(context.agentId, (this.starts.get(context.agentId) ?? 0) + 1);
    this.clients.set(context.agentId, context.agent);
    return { onMessage: (message: DeliveredMessage) => this.#record(context.agentId, context.agent, message) };
  };

  get total(): number {
    return this.#total;
  }

  received(agentId: string): readonly { seq: number; payload: string }[] {
    return this.#byAgent.get(agentId) ?? [];
  }

  onTotal(at: number, action: () => void): void {
    this.#onTotal = { at, action };
  }

  async whenReceived(agentId: string, count: number, boundMs: number): Promise<void> {
    if (this.received(agentId).length >= count) return;
    await nextEvent<{ agentId: string; count: number }>(this.events, 'received', (e) => e.agentId === agentId && e.count >= count, boundMs);
  }

  async #record(agentId: string, agent: AgentClient, message: DeliveredMessage): Promise<void> {
    let list = this.#byAgent.get(agentId);
    if (list === undefined) {
      list = [];
      this.#byAgent.set(agentId, list);
    }
    list.push({ seq: message.seq, payload: Buffer.from(message.payload).toString('utf8') });
    this.#total++;
    if (this.#onTotal !== undefined && this.#total === this.#onTotal.at) this.#onTotal.action();
    this.events.emit('received', { agentId, count: list.length });
    if (message.seq % TOOL_CALL_EVERY === 0) {
      // A tool call as the agent; while no control plane is up it may fail UNAVAILABLE, never as a refused credential.
      try {
        const who = await agent.whoAmI();
        if (who.agentId !== agentId) this.toolCalls.failures.push(`WhoAmI answered ${who.agentId} to ${agentId}`);
        else this.toolCalls.ok++;
      } catch (err) {
        this.toolCalls.failures.push((err as Error).name);
      }
    }
  }
}

/** `['A', 'A', 'B']` as `A×2, B×1` (or `none`). */
function summarize(names: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const name of names) counts.set(name, (counts.get(name) ?? 0) + 1);
  return [...counts].map(([name, n]) => `${name}×${n}`).join(', ') || 'none';
}

function sendOnce(admin: AdminServiceClient, request: SendMessagesRequest): Promise<SendMessagesResponse> {
  return new Promise((resolve, reject) => {
    admin.sendMessages(request, new grpc.Metadata(), { deadline: Date.now() + HANG_BOUND_MS }, (err, response) => (err === null ? resolve(response) : reject(err)));
  });
}

const payloadOf = (index: number): Buffer => Buffer.from(String(index), 'utf8');
const batchOf = (agentId: string, start: number): SendMessagesRequest => ({
  agentId,
  messages: Array.from({ length: Math.min(BATCH, PER_AGENT - start) }, (_, i) => ({
    contentType: 'text/plain',
    payload: payloadOf(start + i),
    idempotencyKey: `${agentId}/${start + i}`,
  })),
});

describe.runIf(isAvailable)('moving a control plane on PostgreSQL to another machine', () => {
  const cleanups: (() => Promise<unknown> | void)[] = [];
  afterEach(async () => {
    const errors: unknown[] = [];
    for (const cleanup of cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, 'teardown failed');
  });

  it(
    '2 hosts × 10 agents under load: the first is SIGKILLed, the second (empty data directory, same store) takes over; nothing lost, duplicated, reordered or refused, no agent restarted',
    async () => {
      const schema = await createTestSchema();
      cleanups.push(() => schema.drop());
      const root = mkdtempSync(join(tmpdir(), 'tether-move-'));
      cleanups.push(() => rmSync(root, { recursive: true, force: true }));
      const adminToken = `admin-${randomBytes(24).toString('base64url')}`;
      const env = { TETHER_STORE: schema.url, TETHER_HEARTBEAT_INTERVAL: '1s' };
      const secondPort = await freePort();

      const first = await ControlPlaneProcess.start({ dataDir: join(root, 'machine-a'), adminToken, env });
      cleanups.push(() => first.close());
      expect(first.port).not.toBe(secondPort);
      const servers = `127.0.0.1:${first.port},127.0.0.1:${secondPort}`;
      const adminOf = (port: number): AdminServiceClient => {
        const client = new AdminServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
          interceptors: [bearerInterceptor({ get: () => adminToken })],
        });
        cleanups.push(() => client.close());
        return client;
      };
      const admins = { current: adminOf(first.port) };

      const recorder = new Recorder();
      const logs = new LogCapture('info');
      const started: { agentId: string; incarnation: number }[] = [];
      const ended: string[] = [];
      const refusals: string[] = [];
      const disconnectCodes: number[] = [];
      const heartbeatFailures: string[] = [];
      const hosts: { host: AgentHost; hostId: string; joinToken: string }[] = [];
      for (let h = 0; h < HOSTS; h++) {
        const enrolled = await call(admins.current.enrollHost.bind(admins.current), { name: `move-host-${h}`, joinTtlMs: 0 });
        const host = AgentHost.start({
          target: servers,
          clock: new SystemClock(),
          logger: logs.logger,
          credentialStore: new MemoryHostCredentialStore(),
          joinToken: enrolled.joinToken,
          modules: new Map([['recorder', recorder.module]]),
          reconnectMinDelayMs: 20,
          reconnectMaxDelayMs: 200,
        });
        cleanups.push(() => host.close());
        host.events.on('agent-started', (e) => started.push({ agentId: e.agentId, incarnation: e.incarnation }));
        host.events.on('agent-stopped', (e) => ended.push(`${e.agentId} stopped: ${e.reason}`));
        host.events.on('agent-ended', (e) => ended.push(`${e.agentId} ${e.state}`));
        host.events.on('refused', (e) => refusals.push(`${e.refusal}: ${e.details}`));
        host.events.on('disconnected', (e) => disconnectCodes.push(e.code));
        host.events.on('heartbeat', (e) => {
          if (!e.isOk) heartbeatFailures.push(e.error?.name ?? 'unknown');
        });
        await nextEvent(host.events, 'connected');
        hosts.push({ host, hostId: enrolled.hostId, joinToken: enrolled.joinToken });
      }

      const agentIds: string[] = [];
      for (const [h, { hostId }] of hosts.entries()) {
        for (let a = 0; a < AGENTS_PER_HOST; a++) {
          const agentId = `move-${h}-${a}`;
          agentIds.push(agentId);
          await call(admins.current.dispatchAgent.bind(admins.current), {
            agentId,
            name: agentId,
            hostId,
            hostLabels: [],
            spec: { kind: 'module', module: 'recorder', command: '', args: [], config: '' },
          });
        }
      }
      await waitUntil(() => started.length === agentIds.length, 'all agents started');

      const total = agentIds.length * PER_AGENT;
      const seed = randomInt(0, 2 ** 31);
      const killAt = Math.floor(total * (0.25 + 0.4 * (seed / 2 ** 31)));
      console.log(`control-plane-move: kill at ${killAt}/${total} received (seed ${seed})`);

      // The move: SIGKILL inside the receipt that reaches the kill point; then the second control plane starts.
      let resolveSecondUp!: () => void;
      const secondUp = new Promise<void>((resolve) => (resolveSecondUp = resolve));
      let sentAtKill = -1;
      let sent = 0;
      const killed = new Promise<void>((resolve) => {
        recorder.onTotal(killAt, () => {
          sentAtKill = sent;
          first.crash();
          resolve();
        });
      });

      // One sender per agent: batch after batch in order, a failed batch sent again (same keys) once the second control plane is up.
      const seqs = new Map<string, number[]>(agentIds.map((id) => [id, []]));
      let retries = 0;
      let duplicatesSeen = 0;
      const sendAll = async (agentId: string): Promise<void> => {
        for (let start = 0; start < PER_AGENT; start += BATCH) {
          await recorder.whenReceived(agentId, start + BATCH - AHEAD, RUN_BOUND_MS);
          const request = batchOf(agentId, start);
          let response: SendMessagesResponse | undefined;
          for (let attempt = 1; response === undefined; attempt++) {
            const admin = admins.current;
            try {
              response = await sendOnce(admin, request);
            } catch (err) {
              const code = (err as grpc.ServiceError).code;
              if (!TRANSIENT.has(code) || attempt >= MAX_SEND_ATTEMPTS) throw new Error(`sending ${agentId} batch at ${start} failed after ${attempt} attempts`, { cause: err });
              retries++;
              // The first control plane is gone: wait for the second (no spinning against a dead port).
              await withinHangBound(secondUp, 'the second control plane', RUN_BOUND_MS);
            }
          }
          expect(response.messages).toHaveLength(request.messages.length);
          seqs.get(agentId)?.push(...response.messages.map((m) => m.seq));
          duplicatesSeen += response.messages.filter((m) => m.duplicate).length;
          sent += request.messages.length;
        }
      };
      const startedAtMs = performance.now();
      const sending = Promise.all(agentIds.map(sendAll));
      sending.catch(() => undefined);

      await withinHangBound(Promise.race([killed, sending.then(() => Promise.reject(new Error('everything was sent before the kill point')))]), 'the kill point', RUN_BOUND_MS);
      expect((await withinHangBound(first.exited, 'the killed control plane to exit')).signal).toBe('SIGKILL');
      expect(sentAtKill).toBeLessThan(total);

      const downAtMs = performance.now();
      const resumed = hosts.map(({ host }) => nextEvent(host.events, 'connected', () => true, RUN_BOUND_MS));
      const second = await ControlPlaneProcess.start({ dataDir: join(root, 'machine-b'), adminToken, env, listen: `127.0.0.1:${secondPort}` });
      cleanups.push(() => second.close());
      expect(second.port).toBe(secondPort);
      admins.current = adminOf(secondPort);
      resolveSecondUp();
      await withinHangBound(Promise.all(resumed), 'both hosts to resume on the second control plane', RUN_BOUND_MS);
      const resumedInMs = performance.now() - downAtMs;

      await withinHangBound(sending, 'the senders to finish', RUN_BOUND_MS);
      for (const agentId of agentIds) await recorder.whenReceived(agentId, PER_AGENT, RUN_BOUND_MS);
      await waitUntil(async () => {
        for (const agentId of agentIds) {
          const pending = await call(admins.current.listMessages.bind(admins.current), { agentId, state: 'pending', pageSize: 1, pageToken: '' });
          if (pending.messages.length > 0) return false;
        }
        return true;
      }, 'every outbox acknowledged on the second control plane');

      // Heartbeats and tool calls through the second control plane succeed for every agent (the first is dead).
      const beatAfterMove = new Set<string>();
      for (const { host } of hosts) host.events.on('heartbeat', (e) => e.isOk && beatAfterMove.add(e.agentId));
      await waitUntil(() => beatAfterMove.size === agentIds.length, 'a heartbeat of every agent through the second control plane', RUN_BOUND_MS);
      for (const agentId of agentIds) expect((await recorder.clients.get(agentId)?.whoAmI())?.agentId).toBe(agentId);

      console.log(
        `control-plane-move: SIGKILL at ${killAt} received / ${sentAtKill} sends answered; hosts resumed on the second control plane in ${Math.round(resumedInMs)} ms; ` +
          `${retries} send retries, ${duplicatesSeen} answered as duplicates; ${recorder.toolCalls.ok} tool calls ok, failures: ${summarize(recorder.toolCalls.failures)}; ` +
          `heartbeat failures (while no control plane was up): ${summarize(heartbeatFailures)}; all in ${Math.round(performance.now() - startedAtMs)} ms`,
      );

      const expected = Array.from({ length: PER_AGENT }, (_, i) => ({ seq: i + 1, payload: String(i) }));
      for (const agentId of agentIds) {
        expect(seqs.get(agentId), `${agentId} seqs from the sender`).toEqual(expected.map((e) => e.seq));
        expect(recorder.received(agentId), `${agentId} received`).toEqual(expected);
      }
      expect(recorder.total).toBe(total);

      // No agent restarted: each started once (its module called once), incarnation 1, none stopped or ended.
      expect(started.map((s) => s.agentId).sort()).toEqual([...agentIds].sort());
      expect(started.every((s) => s.incarnation === 1)).toBe(true);
      expect([...recorder.starts.values()].every((n) => n === 1)).toBe(true);
      expect(ended).toEqual([]);
      const listed = await call(admins.current.listAgents.bind(admins.current), { pageSize: 0, pageToken: '', hostId: '' });
      expect(listed.agents.map((a) => [a.agentId, a.state, a.incarnation]).sort()).toEqual([...agentIds].sort().map((id) => [id, AgentState.AGENT_STATE_RUNNING, 1]));

      // Nothing refused: no host refusal, no UNAUTHENTICATED stream end, no agent credential refused anywhere.
      expect(refusals).toEqual([]);
      expect(disconnectCodes.length).toBeGreaterThan(0);
      expect(disconnectCodes).not.toContain(grpc.status.UNAUTHENTICATED);
      expect(heartbeatFailures.filter((name) => AUTH_FAILURES.has(name))).toEqual([]);
      expect(recorder.toolCalls.failures.filter((name) => AUTH_FAILURES.has(name) || name.startsWith('WhoAmI'))).toEqual([]);
      expect(recorder.toolCalls.ok).toBeGreaterThan(0);
      const cpLines = [...first.stdoutLines(), ...second.stdoutLines()];
      expect(cpLines.filter((line) => line.includes('credential refused'))).toEqual([]);

      // The second machine's data directory holds nothing (the store is the database, the token came from the environment).
      expect(readdirSync(join(root, 'machine-b'))).toEqual([]);
      assertNoSecrets([...cpLines, logs.text()].join('\n'), [adminToken, ...hosts.map((h) => h.joinToken)], 'the control plane and host logs');
    },
    RUN_BOUND_MS * 2,
  );
});
