/**
 * One agent's delivery state on its host, as a pure function
 * `(state, event) → (state, effects)`, so its guarantees (each message into the
 * agent exactly once and in order while the host lives) can be checked by
 * property tests without a network.
 */

/** A delivered message as the reducer sees it (payload opaque). */
export interface InboundMessage<M = unknown> {
  seq: number;
  message: M;
}

/** What the buffer holds for one seq. */
type Buffered<M> = { kind: 'message'; message: M } | { kind: 'skip' };

/**
 * The state. Every event yields a new one; its fields are never changed,
 * except that `buffer` passes from one state to the next and is changed in
 * place (copying it on every event cost time in proportion to what it holds):
 * once a state is reduced, its buffer is the next state's.
 */
export interface DeliveryState<M = unknown> {
  /** Every seq up to this was taken by the agent (or skipped). */
  readonly takenSeq: number;
  /** Deliveries and skips received ahead of the agent, by seq (only the reducer changes it). */
  readonly buffer: ReadonlyMap<number, Buffered<M>>;
  /** The seq the agent is handling now, if any: one at a time. */
  readonly handlingSeq: number | undefined;
  readonly isStopped: boolean;
}

/** What happens to one agent's delivery. */
export type DeliveryEvent<M = unknown> =
  /** The control plane delivered `seq` (perhaps again). */
  | { type: 'deliver'; seq: number; message: M }
  /** The control plane dead-lettered `seq`: move past it. */
  | { type: 'skip'; seq: number }
  /** The agent took `seq`. */
  | { type: 'taken'; seq: number }
  /** The agent refused `seq`; the control plane will deliver it again. */
  | { type: 'refused'; seq: number; error: string }
  /** The agent stopped: nothing more goes in. */
  | { type: 'stop' };

/** What the host must do. */
export type DeliveryEffect<M = unknown> =
  /** Hand `seq` to the agent. */
  | { type: 'give'; seq: number; message: M }
  /** Acknowledge everything up to `seq` (cumulative). */
  | { type: 'ack'; seq: number }
  /** Tell the control plane the agent refused `seq`. */
  | { type: 'nack'; seq: number; error: string };

/** The state of an agent whose messages up to `takenSeq` were already taken. */
export function initialDeliveryState<M>(takenSeq: number): DeliveryState<M> {
  return { takenSeq, buffer: new Map(), handlingSeq: undefined, isStopped: false };
}

/**
 * Applies `event`; returns the next state and the effects to carry out, in
 * order. `state`'s buffer becomes the next state's (see {@link DeliveryState}).
 */
export function reduceDelivery<M>(state: DeliveryState<M>, event: DeliveryEvent<M>): { state: DeliveryState<M>; effects: DeliveryEffect<M>[] } {
  if (state.isStopped) return { state, effects: [] };
  switch (event.type) {
    case 'stop':
      return { state: { ...state, isStopped: true, buffer: new Map(), handlingSeq: undefined }, effects: [] };
    case 'deliver':
    case 'skip': {
      if (event.seq <= state.takenSeq) {
        // Already taken: a re-send after a reconnect. Acknowledge again so the control plane moves on.
        return { state, effects: [{ type: 'ack', seq: state.takenSeq }] };
      }
      // The message in hand is not given twice; a dead letter is final, whatever is re-sent after it.
      if (event.type === 'deliver' && (event.seq === state.handlingSeq || state.buffer.get(event.seq)?.kind === 'skip')) return { state, effects: [] };
      if (event.type === 'deliver' && event.seq === state.takenSeq + 1 && state.handlingSeq === undefined) {
        // The next message, and the agent is free: straight in (whatever was buffered for this seq is this message again).
        (state.buffer as Map<number, Buffered<M>>).delete(event.seq);
        return { state: { ...state, handlingSeq: event.seq }, effects: [{ type: 'give', seq: event.seq, message: event.message }] };
      }
      // A Skip of the message in hand is kept: if the agent refuses it, the queue moves past it at once.
      (state.buffer as Map<number, Buffered<M>>).set(event.seq, event.type === 'deliver' ? { kind: 'message', message: event.message } : { kind: 'skip' });
      return advance({ ...state }, []);
    }
    case 'taken': {
      if (event.seq !== state.handlingSeq) return { state, effects: [] };
      (state.buffer as Map<number, Buffered<M>>).delete(event.seq);
      return advance({ ...state, takenSeq: event.seq, handlingSeq: undefined }, [{ type: 'ack', seq: event.seq }]);
    }
    case 'refused': {
      if (event.seq !== state.handlingSeq) return { state, effects: [] };
      // The message is dropped here; the queue waits for its re-delivery (or a skip).
      return advance({ ...state, handlingSeq: undefined }, [{ type: 'nack', seq: event.seq, error: event.error }]);
    }
  }
}

/** Hands the next message to the agent if it is free and the next seq is here; moves past skips. `state` is a fresh object. */
function advance<M>(state: DeliveryState<M>, effects: DeliveryEffect<M>[]): { state: DeliveryState<M>; effects: DeliveryEffect<M>[] } {
  if (state.handlingSeq !== undefined) return { state, effects };
  let { takenSeq } = state;
  if (!state.buffer.has(takenSeq + 1)) return { state, effects };
  const buffer = state.buffer as Map<number, Buffered<M>>;
  let skipped = false;
  for (;;) {
    const next = buffer.get(takenSeq + 1);
    if (next === undefined) break;
    buffer.delete(takenSeq + 1);
    if (next.kind === 'skip') {
      takenSeq++;
      skipped = true;
      continue;
    }
    const out: DeliveryEffect<M>[] = skipped ? [...effects, { type: 'ack', seq: takenSeq }] : effects;
    return { state: { ...state, takenSeq, handlingSeq: takenSeq + 1 }, effects: [...out, { type: 'give', seq: takenSeq + 1, message: next.message }] };
  }
  return { state: { ...state, takenSeq }, effects: skipped ? [...effects, { type: 'ack', seq: takenSeq }] : effects };
}
