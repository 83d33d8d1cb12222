/**
 * Delivery across an epoch change (a `control-plane restore`), as a property of
 * the host's delivery reducer composed the way the host composes it.
 *
 * Seqs mean something only within one epoch: a restored store's outbox is the
 * backup's (messages 1..B, every seq up to A acknowledged), and it appends again
 * from B+1, so seqs the old epoch already used (perhaps already taken by the
 * agent) now carry different messages. On an epoch change the control plane
 * stops the agent ('superseded') and starts it again with StartAgent.ackedSeq = A;
 * the host stops the old HostedAgent (its reducer gets stop; whatever the old
 * agent finishes afterwards goes to the stopped reducer) and builds a new one from
 * `initialDeliveryState(A)`. The promise: exactly once and in order within an
 * epoch; at least once and in order across the change. Messages here carry their
 * identity (`e<epoch>-<seq>`, the epoch that appended them and their seq there),
 * so a reused seq is told apart from the message it replaced.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  initialDeliveryState,
  reduceDelivery,
  type DeliveryEffect,
  type DeliveryEvent,
  type DeliveryState,
} from '../../../agent-host/delivery/delivery-reducer.js';
import { run } from './run-delivery.js';

/** The identity of the message appended under `seq` in `epoch`. */
const id = (epoch: number, seq: number): string => `e${epoch}-${seq}`;

const deliver = (seq: number, message: string): DeliveryEvent<string> => ({ type: 'deliver', seq, message });
const skip = (seq: number): DeliveryEvent<string> => ({ type: 'skip', seq });
const taken = (seq: number): DeliveryEvent<string> => ({ type: 'taken', seq });
const refused = (seq: number): DeliveryEvent<string> => ({ type: 'refused', seq, error: `no ${seq}` });
const stop: DeliveryEvent<string> = { type: 'stop' };
const give = (seq: number, message: string): DeliveryEffect<string> => ({ type: 'give', seq, message });
const ack = (seq: number): DeliveryEffect<string> => ({ type: 'ack', seq });
const nack = (seq: number): DeliveryEffect<string> => ({ type: 'nack', seq, error: `no ${seq}` });


/** `from..to`, inclusive (empty if `to < from`). */
const seqsFrom = (from: number, to: number): number[] => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

describe('delivery across an epoch change, by example', () => {
  it('gives again what the agent took after the backup, and the new messages under reused seqs', () => {
    // Epoch 1: the agent takes 1..5. The backup was taken when the control plane had 3 messages and an ack for 2.
    const epoch1 = run(
      initialDeliveryState(0),
      seqsFrom(1, 5).flatMap((seq) => [deliver(seq, id(1, seq)), taken(seq)]),
    );
    expect(epoch1.state.takenSeq).toBe(5);
    // The restore: the outbox is e1-1..e1-3 again, and two new messages are appended as 4 and 5.
    expect(run(epoch1.state, [stop]).effects).toEqual([]);
    const epoch2 = run(initialDeliveryState(2), [
      deliver(2, id(1, 2)),
      deliver(3, id(1, 3)),
      taken(3),
      deliver(4, id(2, 4)),
      taken(4),
      deliver(5, id(2, 5)),
      taken(5),
    ]);
    // A re-send of 2 is acknowledged; 3 comes again (at least once); 4 and 5 are the new messages.
    expect(epoch2.effects).toEqual([ack(2), give(3, id(1, 3)), ack(3), give(4, id(2, 4)), ack(4), give(5, id(2, 5)), ack(5)]);
    // What a host that kept its state would do: the new 4 looks like a duplicate of the old one, and is lost.
    expect(run(epoch1.state, [deliver(4, id(2, 4))]).effects).toEqual([ack(5)]);
  });

  it('ignores what the old agent finishes after the stop; the new lifetime sorts out re-sends in any order', () => {
    // Epoch 1: the agent took 1..3 and holds 4. The backup: 4 messages, acked through 2 (3's ack was still on its way).
    const epoch1 = run(initialDeliveryState(0), [...seqsFrom(1, 3).flatMap((seq) => [deliver(seq, id(1, seq)), taken(seq)]), deliver(4, id(1, 4))]);
    expect(epoch1.state.handlingSeq).toBe(4);
    // The host stops the old agent; it finishes 4 anyway: no ack goes out for it.
    expect(run(epoch1.state, [stop, taken(4)]).effects).toEqual([]);
    expect(run(epoch1.state, [stop, refused(4)]).effects).toEqual([]);
    // The restored outbox is e1-1..e1-4 plus a new e2-5, delivered out of order and twice.
    const epoch2 = run(initialDeliveryState(2), [
      deliver(5, id(2, 5)),
      deliver(3, id(1, 3)),
      deliver(3, id(1, 3)),
      taken(3),
      deliver(4, id(1, 4)),
      refused(4),
      deliver(4, id(1, 4)),
      taken(4),
      taken(5),
    ]);
    expect(epoch2.effects).toEqual([
      give(3, id(1, 3)),
      ack(3),
      give(4, id(1, 4)),
      nack(4),
      give(4, id(1, 4)),
      ack(4),
      give(5, id(2, 5)),
      ack(5),
    ]);
  });
});

/** One step of an epoch: what the network, the control plane or the agent does next. */
type Step =
  /** The control plane (re-)sends an unacknowledged message: any seq after its acked seq not dead-lettered, in any order, as often as it likes. */
  | { kind: 'deliver'; pick: number }
  /** A stale (re-)send: any seq of the outbox not dead-lettered, acknowledged or not. */
  | { kind: 'resend'; pick: number }
  /** The control plane (re-)sends the Skip of a dead letter. */
  | { kind: 'skip'; pick: number }
  /** The agent finishes the message it holds: takes it, or refuses it (and the control plane may dead-letter it). */
  | { kind: 'finish'; isTaken: boolean; isDead: boolean }
  /** Someone sends the agent a new message: the control plane appends it. */
  | { kind: 'append' }
  /** The oldest ack on its way reaches the control plane (acks lag, so a backup may miss some). */
  | { kind: 'arrive' };

/** What the message the old agent holds does after the host stopped it. */
type LateOutcome = 'none' | 'taken' | 'refused';

/** One epoch of a run. */
interface EpochPlan {
  /** Messages appended as the epoch begins (epoch 1: the initial outbox; later: after B, under reused seqs). */
  appends: number;
  steps: Step[];
  /** Where among the steps the control plane is backed up (modulo steps + 1); undefined: not backed up in this epoch. */
  backupAt: number | undefined;
  /** How the old agent finishes the message it holds when the epoch ends (unused for the last epoch). */
  late: LateOutcome;
}

/** A run: epoch 1 (always backed up), then one epoch per restore of the latest backup. */
interface Scenario {
  epochs: [EpochPlan, ...EpochPlan[]];
}

/** Mostly taken: an agent that refuses half its messages rarely gets far enough past a backup. */
const isTakenArbitrary = fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) });

const stepArbitrary: fc.Arbitrary<Step> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('deliver' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('resend' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('skip' as const), pick: fc.nat() }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('finish' as const), isTaken: isTakenArbitrary, isDead: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('append' as const) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('arrive' as const) }) },
);

const backupAtArbitrary = fc.oneof(fc.nat({ max: 3 }), fc.nat());

const epochArbitrary = (isBackedUp: boolean): fc.Arbitrary<EpochPlan> =>
  fc.record({
    appends: fc.nat({ max: 4 }),
    // Medium size: fast-check's default (small) makes epochs of at most ten steps, too few to take past a backup and append again.
    steps: fc.array(stepArbitrary, { maxLength: 40, size: 'medium' }),
    // Early backups half the time: the agent then goes on to take messages appended after the backup, whose seqs a restore reuses.
    backupAt: isBackedUp ? backupAtArbitrary : fc.option(backupAtArbitrary, { nil: undefined }),
    late: fc.constantFrom<LateOutcome>('none', 'taken', 'refused'),
  });

const scenarioArbitrary: fc.Arbitrary<Scenario> = fc.record({
  epochs: fc.tuple(epochArbitrary(true), fc.array(epochArbitrary(false), { minLength: 1, maxLength: 3 })).map(([first, rest]): [EpochPlan, ...EpochPlan[]] => [first, ...rest]),
});

/** A reducer of the shape of {@link reduceDelivery}. */
type Reducer = (state: DeliveryState<string>, event: DeliveryEvent<string>) => { state: DeliveryState<string>; effects: DeliveryEffect<string>[] };

/** How the host builds the delivery state of the agent it starts again after an epoch change, from the old one (before its stop). */
type Restart = (previous: DeliveryState<string>, ackedSeq: number) => DeliveryState<string>;

/** What the host does (HostedAgent's constructor): a fresh state at StartAgent.ackedSeq. */
const restartFresh: Restart = (_previous, ackedSeq) => initialDeliveryState(ackedSeq);

/** One HostedAgent: the agent under one epoch. */
interface Lifetime {
  epoch: number;
  /** StartAgent.ackedSeq: what the control plane knew taken when it started the agent. */
  startSeq: number;
  /** The control plane's outbox (identities, seq 1 first) and dead letters, as of the end of the epoch. */
  outbox: string[];
  dead: Set<number>;
  /** What the agent took in this lifetime, in order (a late take of the message it held when stopped included). */
  taken: { seq: number; id: string }[];
  /** The cumulative acks this lifetime's reducer sent, in order. */
  acks: number[];
}

/** What the simulated host, agent and control plane saw. */
interface Observed {
  lifetimes: [Lifetime, ...Lifetime[]];
  /** Every take over the whole run, in order. */
  takes: { epoch: number; seq: number; id: string }[];
  /** Every effect a stopped reducer produced (there must be none). */
  afterStop: DeliveryEffect<string>[];
  /** The last epoch's control plane's acked seq at the end. */
  ackedSeq: number;
  /** The last lifetime's delivery state at the end. */
  final: DeliveryState<string>;
}

/** The control plane's store for one agent: its outbox (identities), dead letters and highest ack received. */
interface Store {
  outbox: string[];
  dead: Set<number>;
  ackedSeq: number;
}

/**
 * Simulates one agent through `scenario`: each epoch's steps (the control plane
 * backed up at the epoch's backup point), and between epochs a restore of the
 * latest backup, done as the system does it (old reducer stopped, late outcome
 * of the held message fed to it, acks in flight lost with the old stream, new
 * state from `restart`). After the last epoch's steps, one more message is
 * appended and the control plane does what it must to finish: hears every ack,
 * re-sends everything unacknowledged in seq order (the Skip of a dead letter),
 * and the agent takes everything.
 */
function simulate(restart: Restart, scenario: Scenario, reduce: Reducer = reduceDelivery): Observed {
  let epoch = 1;
  let store: Store = { outbox: [], dead: new Set(), ackedSeq: 0 };
  let backup: Readonly<Store> | undefined;
  let state = initialDeliveryState<string>(0);
  const newLifetime = (startSeq: number): Lifetime => ({ epoch, startSeq, outbox: [], dead: new Set(), taken: [], acks: [] });
  let lifetime = newLifetime(0);
  const lifetimes: [Lifetime, ...Lifetime[]] = [lifetime];
  const takes: Observed['takes'] = [];
  const afterStop: DeliveryEffect<string>[] = [];
  /** The message the agent holds (its give not yet answered). */
  let holding: { seq: number; id: string } | undefined;
  /** Acks on their way to the control plane, oldest first. */
  let inFlight: number[] = [];

  const apply = (event: DeliveryEvent<string>): DeliveryEffect<string>[] => {
    const next = reduce(state, event);
    state = next.state;
    for (const effect of next.effects) {
      if (effect.type === 'give') {
        expect(holding, `give of ${effect.seq} while the agent still holds ${holding?.seq}`).toBeUndefined();
        // The agent gets what the control plane has under that seq in this epoch, never an older epoch's message.
        expect(effect.message, `the message under seq ${effect.seq} in epoch ${epoch}`).toBe(store.outbox[effect.seq - 1]);
        holding = { seq: effect.seq, id: effect.message };
      } else if (effect.type === 'ack') {
        lifetime.acks.push(effect.seq);
        inFlight.push(effect.seq);
      }
    }
    return next.effects;
  };
  const arrive = (count: number): void => {
    for (const seq of inFlight.splice(0, count)) {
      expect(seq, `an ack of ${seq}, never appended in epoch ${epoch}`).toBeLessThanOrEqual(store.outbox.length);
      store.ackedSeq = Math.max(store.ackedSeq, seq);
    }
  };
  const take = (seq: number, message: string): void => {
    lifetime.taken.push({ seq, id: message });
    takes.push({ epoch, seq, id: message });
  };
  const finish = (isTaken: boolean, isDead: boolean): void => {
    if (holding === undefined) return;
    const { seq, id: message } = holding;
    holding = undefined;
    if (isTaken) {
      take(seq, message);
      expect(apply(taken(seq))[0], `the ack of ${seq}`).toEqual(ack(seq));
    } else {
      expect(apply(refused(seq))[0], `the NACK of ${seq}`).toEqual(nack(seq));
      // The NACK reaches the control plane behind the acks sent before it (one stream); it may dead-letter the message.
      arrive(inFlight.length);
      if (isDead) store.dead.add(seq);
    }
  };
  const endEpoch = (): void => {
    lifetime.outbox = [...store.outbox];
    lifetime.dead = new Set(store.dead);
  };
  const backUp = (): void => {
    backup = { outbox: [...store.outbox], dead: new Set(store.dead), ackedSeq: store.ackedSeq };
  };

  for (const [index, plan] of scenario.epochs.entries()) {
    if (index > 0) {
      endEpoch();
      // The host stops the old agent: its reducer gets stop, then whatever the old agent finishes late.
      const previous = state;
      const stopped = reduce(state, stop);
      afterStop.push(...stopped.effects);
      state = stopped.state;
      if (holding !== undefined) {
        const late = scenario.epochs[index - 1]?.late ?? 'none';
        if (late === 'taken') take(holding.seq, holding.id);
        if (late !== 'none') afterStop.push(...reduce(state, late === 'taken' ? taken(holding.seq) : refused(holding.seq)).effects);
      }
      holding = undefined;
      // The restore: the store is the latest backup's, under a new epoch; acks on the old stream are gone with it.
      if (backup === undefined) throw new Error('epoch 1 is always backed up');
      epoch++;
      store = { outbox: [...backup.outbox], dead: new Set(backup.dead), ackedSeq: backup.ackedSeq };
      inFlight = [];
      // The control plane starts the agent again with StartAgent.ackedSeq = the restored acked seq.
      state = restart(previous, store.ackedSeq);
      lifetime = newLifetime(store.ackedSeq);
      lifetimes.push(lifetime);
    }
    for (let i = 0; i < plan.appends; i++) store.outbox.push(id(epoch, store.outbox.length + 1));
    const backupAt = plan.backupAt === undefined ? undefined : plan.backupAt % (plan.steps.length + 1);
    for (const [i, step] of plan.steps.entries()) {
      if (i === backupAt) backUp();
      if (step.kind === 'finish') {
        finish(step.isTaken, step.isDead);
      } else if (step.kind === 'deliver' || step.kind === 'resend') {
        const alive = seqsFrom(step.kind === 'deliver' ? store.ackedSeq + 1 : 1, store.outbox.length).filter((seq) => !store.dead.has(seq));
        const seq = alive[step.pick % Math.max(1, alive.length)];
        if (seq !== undefined) apply(deliver(seq, store.outbox[seq - 1] ?? ''));
      } else if (step.kind === 'skip') {
        const dead = [...store.dead];
        const seq = dead[step.pick % Math.max(1, dead.length)];
        if (seq !== undefined) apply(skip(seq));
      } else if (step.kind === 'append') {
        store.outbox.push(id(epoch, store.outbox.length + 1));
      } else {
        arrive(1);
      }
    }
    if (backupAt === plan.steps.length) backUp();
  }

  // One last message, so a host that believes itself further along than the control plane shows it by losing one.
  store.outbox.push(id(epoch, store.outbox.length + 1));
  arrive(inFlight.length);
  finish(true, false);
  arrive(inFlight.length);
  for (let seq = store.ackedSeq + 1; seq <= store.outbox.length; seq++) {
    apply(store.dead.has(seq) ? skip(seq) : deliver(seq, store.outbox[seq - 1] ?? ''));
    finish(true, false);
    arrive(inFlight.length);
  }
  endEpoch();
  return { lifetimes, takes, afterStop, ackedSeq: store.ackedSeq, final: state };
}

/** The seqs of `lifetime`'s epoch after its start that the control plane had not dead-lettered by the epoch's end. */
const liveAfterStart = (lifetime: Lifetime): number[] => seqsFrom(lifetime.startSeq + 1, lifetime.outbox.length).filter((seq) => !lifetime.dead.has(seq));

/** The guarantee across epoch changes, as a fast-check property of how the host restarts an agent's delivery. */
function atLeastOnceInOrder(restart: Restart, reduce: Reducer = reduceDelivery): fc.IPropertyWithHooks<[Scenario]> {
  return fc.property(scenarioArbitrary, (scenario) => {
    const { lifetimes, takes, afterStop, ackedSeq, final } = simulate(restart, scenario, reduce);
    for (const lifetime of lifetimes) {
      const seqs = lifetime.taken.map((t) => t.seq);
      // (1) Within a lifetime: strictly increasing (no duplicates), never at or below what it started after.
      let previous = lifetime.startSeq;
      for (const seq of seqs) {
        expect(seq, `epoch ${lifetime.epoch} took ${seq} after ${previous}`).toBeGreaterThan(previous);
        previous = seq;
      }
      // ... and nothing live is passed over: the takes are the live seqs after the start, from the first, in order.
      expect(seqs).toEqual(liveAfterStart(lifetime).slice(0, seqs.length));
      for (const t of lifetime.taken) expect(t.id).toBe(lifetime.outbox[t.seq - 1]);
      // Acks never go backwards and never below the start.
      let lastAck = lifetime.startSeq;
      for (const seq of lifetime.acks) {
        expect(seq).toBeGreaterThanOrEqual(lastAck);
        lastAck = seq;
      }
    }
    const last = lifetimes[lifetimes.length - 1] ?? lifetimes[0];
    // (2) Exactly once and in order in the last lifetime: every live message after its start, reused seqs included.
    expect(last.taken.map((t) => t.id)).toEqual(liveAfterStart(last).map((seq) => last.outbox[seq - 1]));
    expect(final.takenSeq).toBe(last.outbox.length);
    expect(ackedSeq).toBe(last.outbox.length);
    // (3) At least once: every live message of the final outbox was taken, in this lifetime or an earlier one.
    const everTaken = new Set(takes.map((t) => t.id));
    for (const seq of seqsFrom(1, last.outbox.length).filter((s) => !last.dead.has(s))) {
      expect(everTaken.has(last.outbox[seq - 1] ?? ''), `${last.outbox[seq - 1]} (seq ${seq}) never taken`).toBe(true);
    }
    // (4) Over the whole run: epochs do not interleave, positions within an epoch's outbox never go backwards,
    // and each lifetime's first take is the first live message after its start.
    let at = { epoch: 0, position: 0 };
    for (const t of takes) {
      const position = (lifetimes[t.epoch - 1]?.outbox.indexOf(t.id) ?? -1) + 1;
      expect(t.epoch).toBeGreaterThanOrEqual(at.epoch);
      if (t.epoch === at.epoch) expect(position, `${t.id} taken after position ${at.position} in epoch ${t.epoch}`).toBeGreaterThan(at.position);
      else expect(t.seq, `the first take of epoch ${t.epoch}`).toBe(liveAfterStart(lifetimes[t.epoch - 1] ?? last)[0]);
      at = { epoch: t.epoch, position };
    }
    // (5) A stopped reducer gives, acks and NACKs nothing.
    expect(afterStop).toEqual([]);
  });
}

describe('delivery across epoch changes, over generated runs', () => {
  it('puts every message into the agent at least once, in order, and exactly once within an epoch', () => {
    fc.assert(atLeastOnceInOrder(restartFresh), { numRuns: 1000 });
  });

  it('the generated runs reach the cases the property is about', () => {
    // Without these, the property could pass by never restoring past what the agent took: some runs must give a
    // message again (taken after the backup), and some must take a new message under a seq an earlier epoch took.
    const runs = fc.sample(scenarioArbitrary, { numRuns: 500, seed: 1 }).map((scenario) => simulate(restartFresh, scenario));
    const isGivenAgain = (o: Observed): boolean => new Set(o.takes.map((t) => t.id)).size < o.takes.length;
    const isReusedSeqTaken = (o: Observed): boolean => o.takes.some((t, i) => o.takes.slice(0, i).some((e) => e.seq === t.seq && e.id !== t.id));
    expect(runs.filter(isGivenAgain).length).toBeGreaterThan(runs.length / 10);
    expect(runs.filter(isReusedSeqTaken).length).toBeGreaterThan(runs.length / 10);
  });

  it('the property catches a host that keeps its delivery state across the epoch change', () => {
    const keeps: Restart = (previous) => ({ ...previous, handlingSeq: undefined });
    expect(() => fc.assert(atLeastOnceInOrder(keeps), { numRuns: 1000 })).toThrow(/Property failed/);
  });

  it('the property catches a host that starts the new lifetime after the highest seq it took itself', () => {
    const trustsItself: Restart = (previous, ackedSeq) => initialDeliveryState(Math.max(ackedSeq, previous.takenSeq));
    expect(() => fc.assert(atLeastOnceInOrder(trustsItself), { numRuns: 1000 })).toThrow(/Property failed/);
  });

  it('the property catches a reducer that goes on after stop, acknowledging what the old agent finishes late', () => {
    const unstoppable: Reducer = (state, event) => (event.type === 'stop' ? { state, effects: [] } : reduceDelivery(state, event));
    expect(() => fc.assert(atLeastOnceInOrder(restartFresh, unstoppable), { numRuns: 1000 })).toThrow(/Property failed/);
  });
});
