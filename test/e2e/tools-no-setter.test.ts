/**
 * No setter: what a module agent and its tools are handed is frozen and offers
 * no way to set, apply or revoke a token. Keys are listed own and inherited
 * (up to, not including, Object.prototype, which every plain object shares and
 * which holds nothing of ours), symbols included.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import type { AgentContext, AgentModule } from '../../agent-host/tools/agent-module.js';
import { AudienceTokens } from '../../agent-host/tools/audience-tokens.js';
import { fromFile, fromHolder } from '../../agent-host/tools/credential-source.js';
import { call, Harness } from '../support/harness.js';
import { nextEvent } from '../support/wait.js';

/** Names that would let a holder of the object change or drop a token. */
const SETTER_NAME = /^(set|apply|revoke|update|rotate|replace|reset|assign|put|clear|write)/i;

/** Every property key of `value`: own, then inherited, stopping before Object.prototype. */
function allKeys(value: object): string[] {
  const keys: string[] = [];
  for (let at: object | null = value; at !== null && at !== Object.prototype; at = Object.getPrototypeOf(at) as object | null) {
    for (const key of Reflect.ownKeys(at)) keys.push(String(key));
  }
  return keys;
}

/** Keys with a setter function (an accessor `set`) anywhere on the chain. */
function accessorSetters(value: object): string[] {
  const found: string[] = [];
  for (let at: object | null = value; at !== null && at !== Object.prototype; at = Object.getPrototypeOf(at) as object | null) {
    for (const key of Reflect.ownKeys(at)) {
      if (Object.getOwnPropertyDescriptor(at, key)?.set !== undefined) found.push(String(key));
    }
  }
  return found;
}

/** Asserts `value` is frozen, has no setter-like name and no accessor setter, and refuses a write. */
function expectNoSetter(what: string, value: object): void {
  expect(Object.isFrozen(value), `${what} is frozen`).toBe(true);
  expect(allKeys(value).filter((key) => SETTER_NAME.test(key)), `${what} has no setter-like key`).toEqual([]);
  expect(accessorSetters(value), `${what} has no accessor setter`).toEqual([]);
  expect(Reflect.set(value, 'get', () => 'forged'), `${what} refuses a write`).toBe(false);
  expect(Reflect.defineProperty(value, 'apply', { value: () => undefined }), `${what} refuses a new key`).toBe(false);
}

describe('no setter', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('the module context, its credentials and the sources are frozen and read-only', async () => {
    harness = await Harness.start();
    const contexts: AgentContext[] = [];
    const capture: AgentModule = (context) => {
      contexts.push(context);
      return {};
    };
    const { host, hostId } = await harness.startHost('frozen-host', { modules: new Map([['capture', capture]]) });
    await harness.dispatch(host, hostId, 'frozen-1', 'capture');
    const context = contexts[0];
    if (context === undefined) throw new Error('the module was not started');

    expectNoSetter('the context', context);
    expect(() => {
      (context as { credentials: unknown }).credentials = { get: () => 'forged' };
    }).toThrow(TypeError);

    const credentials = context.credentials;
    expectNoSetter('context.credentials', credentials);
    expect(Object.getPrototypeOf(credentials)).toBeNull();
    expect(allKeys(credentials).sort()).toEqual(['expiresAtMs', 'generation', 'get']);
    expect(() => {
      (credentials as { generation: number }).generation = 99;
    }).toThrow(TypeError);

    // Read-only, yet live: a rotation is visible through the same view.
    const token = credentials.get();
    expect(credentials.generation).toBe(1);
    const applied = nextEvent<{ agentId: string; generation: number }>(host.events, 'rotation-applied', (e) => e.agentId === 'frozen-1' && e.generation === 2);
    await call(harness.admin.rotateAgentCredential.bind(harness.admin), { agentId: 'frozen-1' });
    await applied;
    expect(credentials.generation).toBe(2);
    expect(credentials.get()).not.toBe(token);

    const holderSource = fromHolder(credentials);
    expectNoSetter('fromHolder(...)', holderSource);
    expect(allKeys(holderSource)).toEqual(['get']);

    const dir = mkdtempSync(join(tmpdir(), 'tether-frozen-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, 'token'), credentials.get(), { mode: 0o600 });
    const fileSource = fromFile(join(dir, 'token'));
    expectNoSetter('fromFile(...)', fileSource);
    expect(allKeys(fileSource)).toEqual(['get']);

    // The AgentClient handed over calls as the agent and has no way to change whose token it reads.
    expect(allKeys(context.agent).filter((key) => SETTER_NAME.test(key))).toEqual([]);
    expect(accessorSetters(context.agent)).toEqual([]);
    expect((await context.agent.whoAmI()).agentId).toBe('frozen-1');

    // Audience tokens and their sources: the same.
    const tokens = new AudienceTokens({ client: context.agent, clock: context.clock });
    onTestFinished(() => tokens.close());
    expect(allKeys(tokens).filter((key) => SETTER_NAME.test(key))).toEqual([]);
    expect(accessorSetters(tokens)).toEqual([]);
    const audienceSource = tokens.source('billing');
    expectNoSetter('AudienceTokens.source(...)', audienceSource);
    const minted = await tokens.tokenFor('billing');
    expectNoSetter('an AudienceToken', minted);
  });
});
