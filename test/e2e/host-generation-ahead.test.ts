/**
 * A host credential "from the future" of the store's epoch: the host stored and
 * acknowledged a rotation, then the control plane came back from a power loss
 * with a store that had lost that commit (what `synchronous = NORMAL` allowed).
 * The host presents a generation the store never recorded. That cannot mend by
 * retrying, so it is a final refusal (`generation-ahead`) that names the
 * condition, logged once by the control plane, and the host stops instead of
 * reconnecting for ever. The lost commit is simulated by writing the host's row
 * back to its state before the rotation while the control plane is down.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryHostCredentialStore } from '../../agent-host/host-credential-store.js';
import { advanceUntil } from '../support/advance-until.js';
import { withinHangBound } from '../support/control-plane-process.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { Harness } from '../support/harness.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const HOST_TTL_MS = 90_000;
const LOG_LINE = 'host credential generation is ahead of the store; refused for good, enroll the host again';

describe('a host credential ahead of the store', () => {
  let harness: Harness | undefined;
  let proxy: FaultProxy | undefined;

  afterEach(async () => {
    await harness?.close();
    harness = undefined;
    await proxy?.close();
    proxy = undefined;
  });

  it('is refused for good with a reason naming it, logged once, and the host stops retrying', async () => {
    harness = await Harness.start({ hostTokenTtlMs: HOST_TTL_MS });
    const h = harness;
    proxy = await FaultProxy.start({ targetPort: h.cp.port });
    const p = proxy;
    const credentialStore = new MemoryHostCredentialStore();
    const { host, hostId } = await h.startHost('ahead', { target: p.target, credentialStore });
    const joined = await h.store.getHost(hostId);
    if (joined === undefined) throw new Error('no host record');

    // A rotation the host stores and acknowledges: generation 2, recorded by the store.
    h.clock.advance(HOST_TTL_MS / 3);
    await waitUntil(
      async () => (await credentialStore.load())?.generation === 2 && (await h.store.getHost(hostId))?.minValidGeneration === 2,
      'generation 2 stored by the host and acknowledged',
    );

    // Power loss: the control plane goes down, and its store comes back without that rotation.
    const lost = nextEvent(host.events, 'disconnected');
    await h.stopControlPlane();
    await lost;
    const rolledBack = await h.storeLocation.open();
    await rolledBack.updateHost(hostId, {
      credentialGeneration: joined.credentialGeneration,
      minValidGeneration: joined.minValidGeneration,
      credentialIssuedAtMs: joined.credentialIssuedAtMs,
      credentialExpiresAtMs: joined.credentialExpiresAtMs,
    });
    await rolledBack.close();
    expect(joined.credentialGeneration).toBe(1);

    await h.startControlPlane();
    p.setTarget(h.cp.port);
    await advanceUntil(h.clock, 50, () => host.state === 'refused', 'the host to be refused for good');
    const exit = await withinHangBound(host.done, 'the host to stop');
    expect(exit.refusal).toBe('generation-ahead');
    expect(exit.details).toMatch(/generation 2 is ahead of the store's 1: the store lost a commit; enroll the host again/);

    // Refused, it tries no more: time passes and the control plane logs the condition once.
    h.clock.advance(10 * 60_000);
    await waitUntil(() => h.logs.records().some((r) => r.msg === LOG_LINE), 'the refusal logged');
    const logged = h.logs.records().filter((r) => r.msg === LOG_LINE);
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ hostId, gen: 2, storeGen: 1, level: 50 });
    expect(host.state).toBe('refused');
  });
});
