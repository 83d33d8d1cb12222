import type { handleServerStreamingCall } from '@grpc/grpc-js';
import { InvalidArgumentError } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { WatchEventsRequest, WatchEventsResponse } from '../../gen/tether/v1/admin.js';
import type { EventWatchers, WatchRequest } from '../event-log/event-watchers.js';
import { toStatus } from '../grpc/status.js';
import { EVENT_KINDS, isEventKind, type EventKind } from '../store/event-store.js';

/** What {@link watchEventsHandler} needs. */
export interface WatchEventsDeps {
  watchers: EventWatchers;
  logger: Logger;
}

/** A WatchEvents request checked: known kinds only. */
export function watchRequestFromProto(request: WatchEventsRequest): WatchRequest {
  const kinds: EventKind[] = [];
  for (const kind of request.kinds) {
    if (!isEventKind(kind)) throw new InvalidArgumentError(`unknown event kind ${JSON.stringify(kind.slice(0, 64))}; the kinds are ${EVENT_KINDS.join(', ')}`);
    if (!kinds.includes(kind)) kinds.push(kind);
  }
  return { filter: { agentId: request.agentId, hostId: request.hostId, kinds }, afterId: request.afterEventId };
}

/**
 * `AdminService.WatchEvents` (behind the admin guard, which proves the token and its role): streams until the
 * client goes (OK), or the watcher is cut or the control plane closes (the
 * status says which). Errors map once, through {@link toStatus}.
 */
export function watchEventsHandler(deps: WatchEventsDeps): handleServerStreamingCall<WatchEventsRequest, WatchEventsResponse> {
  const { watchers, logger } = deps;
  return (call) => {
    const gone = new AbortController();
    const onGone = (): void => gone.abort();
    call.once('cancelled', onGone);
    call.once('close', onGone);
    const finish = (err?: unknown): void => {
      call.off('cancelled', onGone);
      call.off('close', onGone);
      if (gone.signal.aborted) return;
      if (err === undefined) call.end();
      else call.emit('error', toStatus(err, logger));
    };
    let request: WatchRequest;
    try {
      request = watchRequestFromProto(call.request);
    } catch (err) {
      finish(err);
      return;
    }
    watchers.watch(request, call, gone.signal).then(
      () => finish(),
      (err: unknown) => finish(err),
    );
  };
}
