import { reduceDelivery, type DeliveryEffect, type DeliveryEvent, type DeliveryState } from '../../../agent-host/delivery/delivery-reducer.js';

/** Applies `events` in turn from `state`; returns the final state and every effect, in order. */
export function run(state: DeliveryState<string>, events: DeliveryEvent<string>[]): { state: DeliveryState<string>; effects: DeliveryEffect<string>[] } {
  const effects: DeliveryEffect<string>[] = [];
  let current = state;
  for (const event of events) {
    const next = reduceDelivery(current, event);
    current = next.state;
    effects.push(...next.effects);
  }
  return { state: current, effects };
}
