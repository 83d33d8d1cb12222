/**
 * `control-plane watch`: lifecycle events as they happen (AdminService.WatchEvents).
 */
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError as CommanderInvalidArgument, type Command } from 'commander';
import { SystemClock, type Clock } from '../../common/clock.js';
import { parseCount } from '../../common/cli.js';
import type { AdminServiceClient, Event, WatchEventsRequest } from '../../gen/tether/v1/admin.js';
import { EVENT_KINDS, isEventKind } from '../store/event-store.js';
import { addOutputOption, cliJson, timeCell, type OutputFormat } from './output.js';

/** Reconnections in a row (no event between them) before `watch` gives up. */
const MAX_RECONNECTS = 10;
const RECONNECT_MIN_DELAY_MS = 500;
const RECONNECT_MAX_DELAY_MS = 15_000;

/** Statuses after which `watch` reconnects on its own, from the last id it printed. */
const RECONNECT_STATUSES: readonly grpc.status[] = [grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED, grpc.status.INTERNAL, grpc.status.UNKNOWN];

/** Flags of `watch`. */
interface WatchFlags {
  agent?: string;
  host?: string;
  kind?: string[];
  afterId?: number;
  count?: number;
  reconnect: boolean;
  output: string;
}

/** A stream that ended, with its status. */
class StreamEnded extends Error {
  constructor(readonly status: grpc.StatusObject) {
    super(status.details);
    this.name = 'StreamEnded';
  }
}

/** `--kind`: one of the event kinds, repeatable. */
function collectKind(value: string, previous: string[] = []): string[] {
  if (!isEventKind(value)) throw new CommanderInvalidArgument(`unknown kind ${value}; the kinds are ${EVENT_KINDS.join(', ')}`);
  return [...previous, value];
}

/** One event as a line of a table (wide: incarnation, generation and key too). */
function eventLine(event: Event, isWide: boolean): string {
  const cells = [
    String(event.id),
    timeCell(event.atMs),
    event.kind,
    event.agentId === '' ? '-' : `agent=${event.agentId}`,
    event.hostId === '' ? '-' : `host=${event.hostId}`,
    ...(isWide ? [`incarnation=${event.incarnation}`, `generation=${event.generation}`, event.keyId === '' ? '-' : `key=${event.keyId}`] : []),
    event.reason === '' ? '-' : event.reason,
    event.detail === '' ? '-' : event.detail,
  ];
  return cells.join('  ');
}

/** Prints one event in `format`: a table line, a JSON document, or a JSON line. */
function printEvent(format: OutputFormat, event: Event): void {
  if (format === 'json') console.log(JSON.stringify(cliJson(event), null, 2));
  else if (format === 'jsonl') console.log(JSON.stringify(cliJson(event)));
  else console.log(eventLine(event, format === 'wide'));
}

/**
 * Streams once: calls `onEvent` with each event until the stream ends (rejects
 * with {@link StreamEnded}), or resolves once `onEvent` returns false (the call
 * is cancelled).
 */
function streamOnce(admin: AdminServiceClient, request: WatchEventsRequest, onEvent: (event: Event) => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const stream = admin.watchEvents(request);
    let isDone = false;
    stream.on('data', (message: { event?: Event }) => {
      if (isDone || message.event === undefined) return;
      if (!onEvent(message.event)) {
        isDone = true;
        stream.cancel();
        resolve();
      }
    });
    // The status says how it ended; the error event repeats it.
    stream.on('error', () => undefined);
    stream.on('status', (status: grpc.StatusObject) => {
      if (isDone) return;
      isDone = true;
      reject(new StreamEnded(status));
    });
  });
}

/**
 * Adds `watch`. `withClient` runs the body with an admin client and turns a
 * gRPC failure into its line and exit status.
 */
export function addWatchCommand(program: Command, withClient: (command: Command, body: (admin: AdminServiceClient) => Promise<void>) => Promise<void>, clock: Clock = new SystemClock()): void {
  addOutputOption(
    program
      .command('watch')
      .description(
        'print lifecycle events as they happen (agents placed, started, ended, moved; credentials rotated; dead letters; hosts connected, lost, drained; keys rotated or revoked), ' +
          'oldest first, each with its id; --after-id resumes after an id (0: every event kept); a connection lost, or a watcher cut for reading too slowly, ' +
          'is resumed on its own from the last id printed. Runs until interrupted, or --count events',
      )
      .option('--agent <agent-id>', "only this agent's events")
      .option('--host <host-id>', "only the events naming this host (its own and its agents')")
      .option('--kind <kind>', `only events of this kind (repeatable): ${EVENT_KINDS.join(', ')}`, collectKind)
      .option('--after-id <id>', 'first every kept event after this id (0: all kept; refused, exit 2, if it was pruned), then live ones', parseCount)
      .option('--count <n>', 'exit (0) after this many events', parseCount)
      .option('--no-reconnect', 'exit on a lost connection or a cut instead of resuming'),
    true,
    'table (default: a line per event), wide (with incarnation, generation and key), json (a document per event) or jsonl (an object a line)',
  ).action(async (flags: WatchFlags, command: Command) => {
    const format = (flags.output ?? 'table') as OutputFormat;
    if (flags.count === 0) return;
    await withClient(command, async (admin) => {
      let printed = 0;
      let lastId = flags.afterId;
      const onEvent = (event: Event): boolean => {
        printEvent(format, event);
        lastId = event.id;
        printed++;
        return flags.count === undefined || printed < flags.count;
      };
      for (let attempt = 0; ; attempt++) {
        const printedBefore = printed;
        try {
          await streamOnce(admin, { agentId: flags.agent ?? '', hostId: flags.host ?? '', kinds: flags.kind ?? [], afterEventId: lastId }, onEvent);
          return;
        } catch (err) {
          if (!(err instanceof StreamEnded)) throw err;
          const { status } = err;
          if (status.code === grpc.status.OK || status.code === grpc.status.CANCELLED) return;
          if (printed > printedBefore) attempt = 0;
          if (!flags.reconnect || !RECONNECT_STATUSES.includes(status.code) || attempt >= MAX_RECONNECTS) throw Object.assign(new Error(status.details), status);
          const delayMs = Math.min(RECONNECT_MAX_DELAY_MS, RECONNECT_MIN_DELAY_MS * 2 ** attempt);
          console.error(`watch: stream ended (${grpc.status[status.code]}: ${status.details}); resuming ${lastId === undefined ? 'live' : `after event ${lastId}`} in ${delayMs} ms`);
          await clock.sleep(delayMs);
        }
      }
    });
  });
}
