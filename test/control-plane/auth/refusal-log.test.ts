/**
 * Refused credentials are logged once per principal per window, in a table
 * whose size is bounded whatever the (unverified) subjects, and never with the
 * token itself; the control plane counts every refusal by reason.
 */
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { RefusalLog, refusedIdentity } from '../../../control-plane/auth/refusal-log.js';
import { hs256Jwt } from '../../support/forge-token.js';
import { FakeClock } from '../../support/fake-clock.js';
import { bearer, call, Harness, statusOf } from '../../support/harness.js';
import { LogCapture } from '../../support/log-capture.js';
import { assertNoSecrets } from '../../support/secrets.js';

const WINDOW_MS = 60_000;

function refusalLines(logs: LogCapture): Record<string, unknown>[] {
  return logs.records().filter((r) => r.msg === 'credential refused');
}

describe('RefusalLog', () => {
  it('logs many refusals of one principal once per window, with what it suppressed', () => {
    const clock = new FakeClock();
    const logs = new LogCapture();
    const log = new RefusalLog({ clock, logger: logs.logger, windowMs: WINDOW_MS, maxPrincipals: 16, maxLinesPerWindow: 100 });
    const identity = { jti: 'j', kid: 'k', sub: 'agent-a' };
    for (let i = 0; i < 1_000; i++) log.record('agent', 'expired', identity);
    expect(refusalLines(logs)).toHaveLength(1);
    clock.advance(WINDOW_MS - 1);
    log.record('agent', 'expired', identity);
    expect(refusalLines(logs)).toHaveLength(1);
    clock.advance(1);
    log.record('agent', 'expired', identity);
    const lines = refusalLines(logs);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({ principal: 'agent', reason: 'expired', jti: 'j', kid: 'k', sub: 'agent-a', suppressedBefore: 1_000 });
    // Another principal, or the same sub as another kind of principal, has its own line.
    log.record('host', 'expired', identity);
    log.record('agent', 'expired', { ...identity, sub: 'agent-b' });
    expect(refusalLines(logs)).toHaveLength(4);
  });

  it('never holds more than its bound under 100,000 distinct subjects, evicting the oldest', () => {
    const clock = new FakeClock();
    const logs = new LogCapture('info');
    const log = new RefusalLog({ clock, logger: logs.logger, windowMs: WINDOW_MS, maxPrincipals: 1_000, maxLinesPerWindow: Number.POSITIVE_INFINITY });
    let largest = 0;
    for (let i = 0; i < 100_000; i++) {
      log.record('agent', 'bad-signature', { jti: '', kid: '', sub: `sub-${i}` });
      largest = Math.max(largest, log.size);
    }
    expect(largest).toBe(1_000);
    // The oldest was evicted (logged again), the newest is still remembered (suppressed).
    const before = refusalLines(logs).length;
    log.record('agent', 'bad-signature', { jti: '', kid: '', sub: 'sub-99999' });
    expect(refusalLines(logs)).toHaveLength(before);
    log.record('agent', 'bad-signature', { jti: '', kid: '', sub: 'sub-0' });
    expect(refusalLines(logs)).toHaveLength(before + 1);
  });

  it('caps the lines of one window over all principals and counts the rest into the next line', () => {
    const clock = new FakeClock();
    const logs = new LogCapture();
    const log = new RefusalLog({ clock, logger: logs.logger, windowMs: WINDOW_MS, maxPrincipals: 1_000, maxLinesPerWindow: 10 });
    for (let i = 0; i < 500; i++) log.record('host', 'bad-signature', { jti: '', kid: '', sub: `made-up-${i}` });
    expect(refusalLines(logs)).toHaveLength(10);
    clock.advance(WINDOW_MS);
    log.record('host', 'bad-signature', { jti: '', kid: '', sub: 'next' });
    expect(refusalLines(logs).at(-1)).toMatchObject({ sub: 'next', unloggedBefore: 490 });
  });

  it('reads jti, kid and sub from a token without trusting it, and nothing from what is not one', () => {
    const token = hs256Jwt({ alg: 'HS256', kid: 'kid-1' }, { sub: 'who', jti: 'jti-1' }, 'secret');
    expect(refusedIdentity(token)).toEqual({ jti: 'jti-1', kid: 'kid-1', sub: 'who' });
    expect(refusedIdentity('not a token')).toEqual({ jti: '', kid: '', sub: '' });
    const long = refusedIdentity(hs256Jwt({ alg: 'HS256' }, { sub: 'x'.repeat(10_000) }, 'secret'));
    expect(long.sub.length).toBeLessThanOrEqual(128);
  });
});

describe('refused agent credentials on a real control plane', () => {
  let harness: Harness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  it('logs 50 refusals of one principal once, counts all 50 by reason, and logs no token', async () => {
    harness = await Harness.start();
    const client = harness.agentClient();
    const tokens: string[] = [];
    for (let i = 0; i < 50; i++) {
      const token = hs256Jwt({ alg: 'HS256', kid: 'forged', typ: 'tether-agent+jwt' }, { sub: 'victim', jti: randomUUID() }, 'guess');
      tokens.push(token);
      expect(await statusOf(call(client.whoAmI.bind(client), {}, bearer(token)))).toBe(16);
    }
    const lines = refusalLines(harness.logs).filter((r) => r.sub === 'victim');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ principal: 'agent', kid: 'forged' });
    expect(typeof lines[0]?.reason).toBe('string');
    const metric = await harness.cp.metrics.getSingleMetric('tether_auth_failures_total')?.get();
    const counted = (metric?.values ?? []).filter((v) => v.labels.principal === 'agent').reduce((n, v) => n + v.value, 0);
    expect(counted).toBe(50);
    assertNoSecrets(harness.logs.text(), tokens, 'the captured logs');
  });
});
