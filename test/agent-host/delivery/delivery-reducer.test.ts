/**
 * The host's per-agent delivery state machine, on its own: table tests of each
 * transition, then a property over generated runs (deliveries in any order,
 * duplicates, re-sends, NACKs with re-delivery, dead letters skipped) that each
 * message goes into the agent exactly once, in seq order.
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


const deliver = (seq: number): DeliveryEvent<string> => ({ type: 'deliver', seq, message: `m${seq}` });
const skip = (seq: number): DeliveryEvent<string> => ({ type: 'skip', seq });
const taken = (seq: number): DeliveryEvent<string> => ({ type: 'taken', seq });
const refused = (seq: number): DeliveryEvent<string> => ({ type: 'refused', seq, error: `no ${seq}` });
const give = (seq: number): DeliveryEffect<string> => ({ type: 'give', seq, message: `m${seq}` });
const ack = (seq: number): DeliveryEffect<string> => ({ type: 'ack', seq });
const nack = (seq: number): DeliveryEffect<string> => ({ type: 'nack', seq, error: `no ${seq}` });

describe('reduceDelivery', () => {
  const cases: {
    name: string;
    takenSeq?: number;
    events: DeliveryEvent<string>[];
    effects: DeliveryEffect<string>[];
    takenAfter: number;
    handlingAfter: number | undefined;
  }[] = [
    { name: 'gives the next message at once', events: [deliver(1)], effects: [give(1)], takenAfter: 0, handlingAfter: 1 },
    { name: 'acknowledges once the agent has taken it', events: [deliver(1), taken(1)], effects: [give(1), ack(1)], takenAfter: 1, handlingAfter: undefined },
    {
      name: 'gives one at a time: the second waits for the first to be taken',
      events: [deliver(1), deliver(2)],
      effects: [give(1)],
      takenAfter: 0,
      handlingAfter: 1,
    },
    {
      name: 'gives the buffered next message as soon as the previous one is taken',
      events: [deliver(1), deliver(2), taken(1)],
      effects: [give(1), ack(1), give(2)],
      takenAfter: 1,
      handlingAfter: 2,
    },
    { name: 'holds a message that arrives ahead of a gap', events: [deliver(2)], effects: [], takenAfter: 0, handlingAfter: undefined },
    {
      name: 'fills the gap in seq order',
      events: [deliver(3), deliver(2), deliver(1), taken(1), taken(2), taken(3)],
      effects: [give(1), ack(1), give(2), ack(2), give(3), ack(3)],
      takenAfter: 3,
      handlingAfter: undefined,
    },
    {
      name: 'drops a duplicate of the message being handled',
      events: [deliver(1), deliver(1)],
      effects: [give(1)],
      takenAfter: 0,
      handlingAfter: 1,
    },
    {
      name: 'answers a re-send of a taken message with the cumulative ack, never a second give',
      events: [deliver(1), taken(1), deliver(2), taken(2), deliver(1)],
      effects: [give(1), ack(1), give(2), ack(2), ack(2)],
      takenAfter: 2,
      handlingAfter: undefined,
    },
    {
      name: 'resumes after what an earlier placement took',
      takenSeq: 5,
      events: [deliver(4), deliver(5), deliver(6)],
      effects: [ack(5), ack(5), give(6)],
      takenAfter: 5,
      handlingAfter: 6,
    },
    {
      name: 'NACKs a refusal and holds the messages after it',
      events: [deliver(1), deliver(2), refused(1)],
      effects: [give(1), nack(1)],
      takenAfter: 0,
      handlingAfter: undefined,
    },
    {
      name: 'gives a refused message again when it is re-delivered, then the ones after it',
      events: [deliver(1), deliver(2), refused(1), deliver(1), taken(1), taken(2)],
      effects: [give(1), nack(1), give(1), ack(1), give(2), ack(2)],
      takenAfter: 2,
      handlingAfter: undefined,
    },
    {
      name: 'moves past a dead letter on Skip and acknowledges through it',
      events: [deliver(1), deliver(2), refused(1), skip(1), taken(2)],
      effects: [give(1), nack(1), ack(1), give(2), ack(2)],
      takenAfter: 2,
      handlingAfter: undefined,
    },
    {
      name: 'moves past a run of skips in one step',
      events: [skip(2), skip(1), skip(3)],
      effects: [ack(2), ack(3)],
      takenAfter: 3,
      handlingAfter: undefined,
    },
    {
      name: 'holds a skip that arrives ahead of a gap',
      events: [skip(2)],
      effects: [],
      takenAfter: 0,
      handlingAfter: undefined,
    },
    {
      // Re-given after a refusal, then dead-lettered while in hand: a second refusal must not stall the queue
      // waiting for a Skip the control plane already sent.
      name: 'keeps a Skip of the message in hand, and moves past it if the agent refuses it',
      events: [deliver(1), deliver(2), refused(1), deliver(1), skip(1), refused(1)],
      effects: [give(1), nack(1), give(1), nack(1), ack(1), give(2)],
      takenAfter: 1,
      handlingAfter: 2,
    },
    {
      name: 'forgets a Skip of the message in hand once the agent takes it',
      events: [deliver(1), skip(1), taken(1), deliver(2)],
      effects: [give(1), ack(1), give(2)],
      takenAfter: 1,
      handlingAfter: 2,
    },
    {
      name: 'never gives a dead letter re-sent after its Skip',
      events: [skip(2), deliver(2), deliver(1), taken(1)],
      effects: [give(1), ack(1), ack(2)],
      takenAfter: 2,
      handlingAfter: undefined,
    },
    {
      name: 'ignores an outcome for a seq it is not handling',
      events: [deliver(1), taken(2), refused(3)],
      effects: [give(1)],
      takenAfter: 0,
      handlingAfter: 1,
    },
    {
      name: 'ignores everything once stopped',
      events: [deliver(1), { type: 'stop' }, taken(1), deliver(2), skip(3)],
      effects: [give(1)],
      takenAfter: 0,
      handlingAfter: undefined,
    },
  ];

  it.each(cases)('$name', ({ takenSeq, events, effects, takenAfter, handlingAfter }) => {
    const result = run(initialDeliveryState(takenSeq ?? 0), events);
    expect(result.effects).toEqual(effects);
    expect(result.state.takenSeq).toBe(takenAfter);
    expect(result.state.handlingSeq).toBe(handlingAfter);
  });

  it('never changes the fields of the state it is given (its buffer passes on to the next state)', () => {
    const start = run(initialDeliveryState<string>(0), [deliver(2), deliver(1)]).state;
    const before = { takenSeq: start.takenSeq, handlingSeq: start.handlingSeq, isStopped: start.isStopped };
    run(start, [taken(1), taken(2), deliver(3), { type: 'stop' }]);
    expect({ takenSeq: start.takenSeq, handlingSeq: start.handlingSeq, isStopped: start.isStopped }).toEqual(before);
  });

  it('keeps one buffer from event to event instead of copying it (a copy per event cost time in proportion to what it held)', () => {
    let state = initialDeliveryState<string>(0);
    const buffer = state.buffer;
    for (const event of [deliver(1), deliver(3), deliver(2), deliver(4), taken(1), taken(2), skip(5), taken(3)]) {
      state = reduceDelivery(state, event).state;
      expect(state.buffer).toBe(buffer);
    }
    expect(state.handlingSeq).toBe(4);
    expect([...state.buffer.keys()]).toEqual([5]);
  });
});

/** One step of a generated run: what the network, the control plane or the agent does next. */
type Step =
  /** The control plane (re-)sends a message: any seq not dead-lettered, in any order, as often as it likes. */
  | { kind: 'deliver'; pick: number }
  /** The control plane (re-)sends the Skip of a dead letter. */
  | { kind: 'skip'; pick: number }
  /** The agent finishes the message it holds: takes it, or refuses it (and the control plane may dead-letter it). */
  | { kind: 'finish'; isTaken: boolean; isDead: boolean };

const stepArbitrary: fc.Arbitrary<Step> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('deliver' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('skip' as const), pick: fc.nat() }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('finish' as const), isTaken: fc.boolean(), isDead: fc.boolean() }) },
);

/** What the simulated agent and control plane saw. */
interface Observed {
  /** Seqs the agent took, in the order it took them. */
  taken: number[];
  /** Seqs handed to the agent, in order (a refused one may come again). */
  given: number[];
  /** Seqs the control plane dead-lettered. */
  dead: Set<number>;
  /** Every cumulative ack the host sent, in order. */
  acks: number[];
}

/** A reducer of the shape of {@link reduceDelivery}. */
type Reducer = (state: DeliveryState<string>, event: DeliveryEvent<string>) => { state: DeliveryState<string>; effects: DeliveryEffect<string>[] };

/**
 * Simulates one agent's delivery between a control plane that sends seqs
 * `startSeq+1 .. startSeq+count` (duplicated, re-sent and reordered as the
 * steps say) and an agent that takes or refuses each message it is given.
 * After the generated steps, the control plane does what it must to finish:
 * re-sends every message that is not dead (in seq order) or the Skip of each
 * dead letter, and the agent takes everything; then the agent stops.
 */
function simulate(reduce: Reducer, startSeq: number, count: number, steps: Step[]): { observed: Observed; final: DeliveryState<string>; afterStop: DeliveryEffect<string>[] } {
  const observed: Observed = { taken: [], given: [], dead: new Set(), acks: [] };
  let state = initialDeliveryState<string>(startSeq);
  const seqs = Array.from({ length: count }, (_, i) => startSeq + 1 + i);
  /** The seq the agent holds (its give not yet answered). */
  let holding: number | undefined;
  const apply = (event: DeliveryEvent<string>): DeliveryEffect<string>[] => {
    const next = reduce(state, event);
    state = next.state;
    for (const effect of next.effects) {
      if (effect.type === 'give') {
        expect(holding, `give of ${effect.seq} while the agent still holds ${holding}`).toBeUndefined();
        expect(effect.message).toBe(`m${effect.seq}`);
        holding = effect.seq;
        observed.given.push(effect.seq);
      } else if (effect.type === 'ack') {
        observed.acks.push(effect.seq);
      }
    }
    return next.effects;
  };
  const finish = (isTaken: boolean, isDead: boolean): void => {
    if (holding === undefined) return;
    const seq = holding;
    holding = undefined;
    if (isTaken) {
      observed.taken.push(seq);
      expect(apply(taken(seq))[0], `the ack of ${seq}`).toEqual(ack(seq));
    } else {
      expect(apply(refused(seq))[0], `the NACK of ${seq}`).toEqual(nack(seq));
      if (isDead) observed.dead.add(seq);
    }
  };

  for (const step of steps) {
    if (step.kind === 'finish') {
      finish(step.isTaken, step.isDead);
    } else if (step.kind === 'deliver') {
      const alive = seqs.filter((seq) => !observed.dead.has(seq));
      const seq = alive[step.pick % Math.max(1, alive.length)];
      if (seq !== undefined) apply(deliver(seq));
    } else {
      const dead = [...observed.dead];
      const seq = dead[step.pick % Math.max(1, dead.length)];
      if (seq !== undefined) apply(skip(seq));
    }
  }
  finish(true, false);
  for (const seq of seqs) {
    apply(observed.dead.has(seq) ? skip(seq) : deliver(seq));
    finish(true, false);
  }
  const stopped = reduce(state, { type: 'stop' });
  state = stopped.state;
  const afterStop = [...stopped.effects, ...reduce(state, deliver(startSeq + count + 1)).effects, ...reduce(state, skip(startSeq + count + 1)).effects];
  return { observed, final: state, afterStop };
}

/** The guarantee, as a fast-check property of `reduce`. */
function exactlyOnceInOrder(reduce: Reducer): fc.IPropertyWithHooks<[number, number, Step[]]> {
  return fc.property(fc.nat({ max: 3 }), fc.integer({ min: 1, max: 8 }), fc.array(stepArbitrary, { maxLength: 80 }), (startSeq, count, steps) => {
    const { observed, final, afterStop } = simulate(reduce, startSeq, count, steps);
    const seqs = Array.from({ length: count }, (_, i) => startSeq + 1 + i);
    // Exactly once and in order: the taken seqs are every live seq, ascending, none twice; no dead letter among them.
    expect(observed.taken).toEqual(seqs.filter((seq) => !observed.dead.has(seq)));
    // Nothing an earlier placement took is given again; gives never go backwards (a refused seq may come again).
    for (const seq of observed.given) expect(seq).toBeGreaterThan(startSeq);
    for (let i = 1; i < observed.given.length; i++) expect(observed.given[i] ?? 0).toBeGreaterThanOrEqual(observed.given[i - 1] ?? 0);
    // Acks are cumulative, never go backwards, and end at the last seq.
    for (let i = 1; i < observed.acks.length; i++) expect(observed.acks[i] ?? 0).toBeGreaterThanOrEqual(observed.acks[i - 1] ?? 0);
    expect(observed.acks.at(-1)).toBe(startSeq + count);
    expect(final.takenSeq).toBe(startSeq + count);
    // Stopped: nothing more goes in.
    expect(final.isStopped).toBe(true);
    expect(afterStop).toEqual([]);
  });
}

describe('reduceDelivery, over generated runs', () => {
  it('puts every message into the agent exactly once and in seq order, whatever the network and the agent do', () => {
    fc.assert(exactlyOnceInOrder(reduceDelivery), { numRuns: 2000 });
  });

  it('the property catches a reducer that gives a re-sent, already taken message again', () => {
    const forgetful: Reducer = (state, event) =>
      event.type === 'deliver' && event.seq <= state.takenSeq && state.handlingSeq === undefined
        ? { state: { ...state, handlingSeq: event.seq }, effects: [{ type: 'give', seq: event.seq, message: event.message }] }
        : reduceDelivery(state, event);
    expect(() => fc.assert(exactlyOnceInOrder(forgetful), { numRuns: 2000 })).toThrow(/Property failed/);
  });

  it('the property catches a reducer that lets a message overtake a refused one', () => {
    const impatient: Reducer = (state, event) => {
      if (event.type !== 'refused' || event.seq !== state.handlingSeq) return reduceDelivery(state, event);
      // Wrongly counts the refused message as taken, so the next one goes in ahead of its re-delivery.
      const next = reduceDelivery(state, { type: 'taken', seq: event.seq });
      return { state: next.state, effects: [{ type: 'nack', seq: event.seq, error: event.error }, ...next.effects.filter((e) => e.type !== 'ack')] };
    };
    expect(() => fc.assert(exactlyOnceInOrder(impatient), { numRuns: 2000 })).toThrow(/Property failed/);
  });
});
