/**
 * The soak's independent checker. It knows only what the sender was told
 * (which seq each message it sent got) and what each agent instance actually
 * received and saw from its tool calls; it never asks the control plane what
 * happened. Per-message records live in typed arrays, outside the V8 heap, so
 * the soak's own heap measurement is not the ledger growing.
 */

/** A growable column of 32-bit integers (0 where nothing was set). */
class IntColumn {
  #data = new Int32Array(1024);

  get(index: number): number {
    return index < this.#data.length ? (this.#data[index] ?? 0) : 0;
  }

  set(index: number, value: number): void {
    if (index >= this.#data.length) {
      let length = this.#data.length;
      while (length <= index) length *= 2;
      const grown = new Int32Array(length);
      grown.set(this.#data);
      this.#data = grown;
    }
    this.#data[index] = value;
  }
}

/** One run of one agent: what a module instance on one host incarnation saw. */
export interface AgentInstance {
  readonly agentId: string;
  readonly slot: number;
  readonly hostIncarnation: number;
  /**
   * Started after an earlier instance of the agent on another host or host
   * incarnation (its host crashed, or it moved): a message the earlier one took
   * but had not acknowledged may come again (counted apart, not a duplicate).
   */
  readonly isAfterHostCrash: boolean;
  /** Its host crashed: it takes nothing more, and nothing it sees counts. */
  isDead: boolean;
  /** Its host fenced itself (see {@link Ledger.onSelfFenced}): it was stopped, and may be started again there. */
  isFenced?: boolean;
  /** Its host stopped it (its signal aborted): nothing it sees afterwards counts. */
  isStopped?: boolean;
  /** A drain of its host moves it: the next instance starts from the acked seq, so anything it takes again is a duplicate. */
  isDraining?: boolean;
  firstSeq: number;
  lastSeq: number;
  /** Soak time of its first and last receipt (NaN: none). */
  firstReceiptAtMs: number;
  lastReceiptAtMs: number;
  /**
   * Successful calls as itself: the earliest END of one and the latest START
   * of one. It was accepted at or before the first and at or after the second
   * (see {@link Ledger.judgeOverlaps}).
   */
  okFromMs: number;
  okToMs: number;
  /** Incarnations WhoAmI named (the control plane's, from the token it accepted). */
  readonly incarnations: Set<number>;
}

/** Everything the checker keeps about one agent. */
class AgentRecord {
  /** index (send order) → seq the outbox gave it; 0 while unconfirmed. */
  readonly seqOfIndex = new IntColumn();
  confirmed = 0;
  /** seq → receipts into the agent (all instances). */
  readonly receipts = new IntColumn();
  /** seq → index + 1, from the payload of its first receipt. */
  readonly indexAtSeq = new IntColumn();
  maxSeqSeen = 0;
  uniqueDelivered = 0;
  /** Every confirmed message below this index is known to have arrived. */
  deliveredPrefix = 0;
  current: AgentInstance | undefined;
  /** Every instance it had, in start order (a handful: one per start). */
  readonly instances: AgentInstance[] = [];
}

/** How a tool call ended, as the agent saw it (after the tool library's one retry on UNAUTHENTICATED). */
export type CallOutcome = 'ok' | 'unauthenticated' | 'permission-denied' | 'unavailable' | 'other';

/** The counts the summary prints and the verdict is drawn from. */
export interface LedgerCounts {
  messagesSent: number;
  messagesDelivered: number;
  messagesLost: number;
  seqsMissing: number;
  outOfOrder: number;
  duplicatedIntoAgent: number;
  redeliveredAfterHostCrash: number;
  misdelivered: number;
  contentMismatches: number;
  sendOrderMismatches: number;
  deliveredUnconfirmed: number;
  restartsWhileHostLived: number;
  restartsAfterHostCrash: number;
  /** Started again on the host that fenced itself during a scheduled outage past the lost-host grace (issue 15). */
  restartsAfterSelfFence: number;
  /** Self-fences the schedule excuses (a scheduled outage of the host longer than TTL/3), and those it does not. */
  selfFences: number;
  selfFencesUnexcused: number;
  /** Instances started on another host slot than the one before (ensured agents moved by the control plane). */
  moves: number;
  /** Moves whose previous instance was not yet seen stopped, dead or fenced when the new one started (a figure: validity is judged by the overlaps). */
  movesBeforeOldStopped: number;
  /** Moves made by a drain (a hand-over from the acked seq: no redelivery allowed). */
  movesByDrain: number;
  /** Dispatched (pinned) agents started on another slot: never allowed. */
  pinnedMoved: number;
  /** Moves whose new instance WhoAmI named an incarnation not above every one the previous instance was named. */
  movesWithoutNewIncarnation: number;
  /** Pairs of instances of one agent that took messages in overlapping stretches of time. */
  overlappingReceipts: number;
  /** Pairs of instances of one agent whose own calls were certainly accepted in overlapping stretches of time. */
  overlappingValidity: number;
  toolCalls: number;
  toolCallsOk: number;
  toolCallsUnavailable: number;
  toolCallsOther: number;
  unauthenticatedCounted: number;
  unauthenticatedExcused: number;
  hostHeartbeatUnauthenticatedCounted: number;
  hostHeartbeatUnauthenticatedExcused: number;
  refusedAsItself: number;
  wrongIdentity: number;
  crossAgentAttempts: number;
  crossAgentRefused: number;
  actedAsAnother: number;
}

/** The checker. */
export class Ledger {
  readonly #agents = new Map<string, AgentRecord>();
  readonly #isExcused: (slot: number, atMs: number) => boolean;
  /** Agents the control plane may move (created with EnsureAgent); the others are pinned to one slot. */
  readonly #movable: ReadonlySet<string>;
  /** Self-fences seen, judged at the end (see {@link judgeSelfFences}). */
  readonly #selfFences: { slot: number; hostIncarnation: number; atMs: number }[] = [];
  readonly counts: LedgerCounts = {
    messagesSent: 0,
    messagesDelivered: 0,
    messagesLost: 0,
    seqsMissing: 0,
    outOfOrder: 0,
    duplicatedIntoAgent: 0,
    redeliveredAfterHostCrash: 0,
    misdelivered: 0,
    contentMismatches: 0,
    sendOrderMismatches: 0,
    deliveredUnconfirmed: 0,
    restartsWhileHostLived: 0,
    restartsAfterHostCrash: 0,
    restartsAfterSelfFence: 0,
    selfFences: 0,
    selfFencesUnexcused: 0,
    moves: 0,
    movesBeforeOldStopped: 0,
    movesByDrain: 0,
    pinnedMoved: 0,
    movesWithoutNewIncarnation: 0,
    overlappingReceipts: 0,
    overlappingValidity: 0,
    toolCalls: 0,
    toolCallsOk: 0,
    toolCallsUnavailable: 0,
    toolCallsOther: 0,
    unauthenticatedCounted: 0,
    unauthenticatedExcused: 0,
    hostHeartbeatUnauthenticatedCounted: 0,
    hostHeartbeatUnauthenticatedExcused: 0,
    refusedAsItself: 0,
    wrongIdentity: 0,
    crossAgentAttempts: 0,
    crossAgentRefused: 0,
    actedAsAnother: 0,
  };
  /** The first few things that went wrong, described (no token ever). */
  readonly incidents: string[] = [];

  /**
   * `isExcused(slot, atMs)`: whether a 401 on that host's agent at that moment falls outside the promise.
   * `movable`: the agents created with EnsureAgent, which may start on another slot once their host is lost.
   */
  constructor(agentIds: readonly string[], isExcused: (slot: number, atMs: number) => boolean, movable: ReadonlySet<string> = new Set()) {
    for (const agentId of agentIds) this.#agents.set(agentId, new AgentRecord());
    this.#isExcused = isExcused;
    this.#movable = movable;
  }

  /** The payload the sender puts in the `index`-th message to `agentId`. */
  static payload(agentId: string, index: number): Buffer {
    return Buffer.from(`${agentId}#${index}`, 'utf8');
  }

  /** A module instance of `agentId` started on host `slot`, incarnation `hostIncarnation`. */
  onInstanceStart(agentId: string, slot: number, hostIncarnation: number): AgentInstance {
    const record = this.#record(agentId);
    const previous = record.current;
    let isAfterHostCrash = false;
    if (previous !== undefined) {
      if (previous.slot === slot && previous.hostIncarnation === hostIncarnation && previous.isFenced === true) {
        // Fenced (stopped by its own host past the grace), then started again there: a message it
        // took but had not acknowledged comes again, as after a crash.
        isAfterHostCrash = true;
        this.counts.restartsAfterSelfFence++;
      } else if (previous.slot === slot && previous.hostIncarnation === hostIncarnation) {
        this.counts.restartsWhileHostLived++;
        this.#incident(`${agentId} started again on host ${slot}#${hostIncarnation}, which had it running`);
      } else {
        // Another host incarnation (a crash) or another slot (a move): what the earlier instance took
        // unacknowledged comes again. Two live, valid copies at once are judged by the overlaps. Not
        // after a drain: it waits for the acks of what was taken before it starts the new copy.
        isAfterHostCrash = previous.isDraining !== true || previous.isDead;
        if (previous.isDraining === true && !previous.isDead) this.counts.movesByDrain++;
        if (previous.slot === slot) this.counts.restartsAfterHostCrash++;
        else {
          this.counts.moves++;
          if (previous.isDead !== true && previous.isFenced !== true && previous.isStopped !== true) this.counts.movesBeforeOldStopped++;
          if (!this.#movable.has(agentId)) {
            this.counts.pinnedMoved++;
            this.#incident(`${agentId}, dispatched to host ${previous.slot}, started on host ${slot}`);
          }
        }
      }
    }
    const instance: AgentInstance = {
      agentId,
      slot,
      hostIncarnation,
      isAfterHostCrash,
      isDead: false,
      firstSeq: 0,
      lastSeq: 0,
      firstReceiptAtMs: Number.NaN,
      lastReceiptAtMs: Number.NaN,
      okFromMs: Number.POSITIVE_INFINITY,
      okToMs: Number.NEGATIVE_INFINITY,
      incarnations: new Set(),
    };
    record.current = instance;
    record.instances.push(instance);
    return instance;
  }

  /** A drain of `agentId`'s host began: until {@link onDrainEnded}, its current instance is handed over, not lost. */
  onDrainStarted(agentId: string): void {
    const current = this.#record(agentId).current;
    if (current !== undefined) current.isDraining = true;
  }

  /** The drain is over (the agent moved, or it did not). */
  onDrainEnded(agentId: string): void {
    for (const instance of this.#record(agentId).instances) instance.isDraining = false;
  }

  /** The instance was stopped by its host (its signal aborted): what it sees from now on does not count. */
  onInstanceStopped(instance: AgentInstance): void {
    instance.isStopped = true;
  }

  /** The instance that is `agentId`'s latest start (undefined before its first). */
  current(agentId: string): AgentInstance | undefined {
    return this.#record(agentId).current;
  }

  /** Every instance `agentId` has had, in start order. */
  instancesOf(agentId: string): readonly AgentInstance[] {
    return this.#record(agentId).instances;
  }

  /**
   * Host `slot` (incarnation `hostIncarnation`) fenced itself at `atMs`: it
   * stopped `agentIds` after no contact for the lost-host grace. Judged at the
   * end by {@link judgeSelfFences} (whether the outage it fell in was long
   * enough is known only once it is over).
   */
  onSelfFenced(slot: number, hostIncarnation: number, agentIds: readonly string[], atMs: number): void {
    this.#selfFences.push({ slot, hostIncarnation, atMs });
    for (const agentId of agentIds) {
      const current = this.#agents.get(agentId)?.current;
      if (current !== undefined && current.slot === slot && current.hostIncarnation === hostIncarnation) current.isFenced = true;
    }
  }

  /** Counts the self-fences: excused only inside a scheduled outage longer than TTL/3; any other is an incident. */
  judgeSelfFences(isInLongOutage: (slot: number, atMs: number) => boolean): void {
    for (const { slot, hostIncarnation, atMs } of this.#selfFences) {
      if (isInLongOutage(slot, atMs)) this.counts.selfFences++;
      else {
        this.counts.selfFencesUnexcused++;
        this.#incident(`host ${slot}#${hostIncarnation} fenced itself at +${Math.round(atMs / 1000)} s, outside any scheduled outage longer than TTL/3`);
      }
    }
    this.#selfFences.length = 0;
  }

  /** What an instance received at `atMs` (its host passed it the message; it takes it). */
  onReceipt(instance: AgentInstance, seq: number, payload: Uint8Array, atMs = Number.NaN): void {
    if (instance.isDead) return;
    const record = this.#record(instance.agentId);
    if (Number.isNaN(instance.firstReceiptAtMs)) instance.firstReceiptAtMs = atMs;
    instance.lastReceiptAtMs = atMs;
    const text = Buffer.from(payload).toString('utf8');
    const hash = text.lastIndexOf('#');
    const addressee = text.slice(0, hash);
    const index = Number(text.slice(hash + 1));
    if (addressee !== instance.agentId || !Number.isSafeInteger(index)) {
      this.counts.misdelivered++;
      this.#incident(`${instance.agentId} received seq ${seq} addressed to ${addressee}`);
      return;
    }
    const count = record.receipts.get(seq) + 1;
    record.receipts.set(seq, count);
    if (count === 1) {
      record.uniqueDelivered++;
      record.indexAtSeq.set(seq, index + 1);
    } else {
      if (record.indexAtSeq.get(seq) !== index + 1) {
        this.counts.contentMismatches++;
        this.#incident(`${instance.agentId} seq ${seq} came with message ${index}, earlier with ${record.indexAtSeq.get(seq) - 1}`);
      }
      const isSeenByThisInstance = instance.firstSeq !== 0 && seq >= instance.firstSeq && seq <= instance.lastSeq;
      if (!isSeenByThisInstance && instance.isAfterHostCrash) {
        this.counts.redeliveredAfterHostCrash++;
      } else {
        this.counts.duplicatedIntoAgent++;
        this.#incident(`${instance.agentId} received seq ${seq} again on host ${instance.slot}#${instance.hostIncarnation}`);
      }
    }
    if (instance.firstSeq === 0) {
      if (seq > record.maxSeqSeen + 1) {
        this.counts.outOfOrder++;
        this.#incident(`${instance.agentId} started at seq ${seq}, past ${record.maxSeqSeen + 1}`);
      }
      instance.firstSeq = seq;
    } else if (seq !== instance.lastSeq + 1) {
      this.counts.outOfOrder++;
      this.#incident(`${instance.agentId} received seq ${seq} after ${instance.lastSeq}`);
    }
    instance.lastSeq = Math.max(instance.lastSeq, seq);
    record.maxSeqSeen = Math.max(record.maxSeqSeen, seq);
  }

  /** The sender's send of message `index` to `agentId` was answered with `seq`. */
  onSendConfirmed(agentId: string, index: number, seq: number): void {
    const record = this.#record(agentId);
    if (record.seqOfIndex.get(index) === 0) this.counts.messagesSent++;
    record.seqOfIndex.set(index, seq);
    record.confirmed = Math.max(record.confirmed, index + 1);
  }

  /** Messages the sender has had confirmed for `agentId`. */
  confirmed(agentId: string): number {
    return this.#record(agentId).confirmed;
  }

  /** Whether the first `count` messages sent to `agentId` (all confirmed) have reached it at least once. */
  isDeliveredUpTo(agentId: string, count: number): boolean {
    const record = this.#record(agentId);
    for (let index = 0; index < count; index++) {
      const seq = record.seqOfIndex.get(index);
      if (seq === 0 || record.receipts.get(seq) === 0) return false;
    }
    return true;
  }

  /** Whether every confirmed message of every agent has reached it at least once. */
  isAllDelivered(): boolean {
    for (const record of this.#agents.values()) {
      while (record.deliveredPrefix < record.confirmed && record.receipts.get(record.seqOfIndex.get(record.deliveredPrefix)) > 0) record.deliveredPrefix++;
      if (record.deliveredPrefix < record.confirmed) return false;
    }
    return true;
  }

  /**
   * A tool call the agent made (as itself, or as another agent) ended with
   * `outcome` at `atMs`; it was made at `startedAtMs` (defaults to `atMs`).
   */
  onToolCall(instance: AgentInstance, kind: 'as-itself' | 'as-another', outcome: CallOutcome, atMs: number, detail = '', startedAtMs = atMs): void {
    if (instance.isDead) return;
    if (kind === 'as-itself' && outcome === 'ok') {
      instance.okFromMs = Math.min(instance.okFromMs, atMs);
      instance.okToMs = Math.max(instance.okToMs, startedAtMs);
    }
    this.counts.toolCalls++;
    if (kind === 'as-another') {
      this.counts.crossAgentAttempts++;
      if (outcome === 'permission-denied') {
        this.counts.crossAgentRefused++;
        return;
      }
      if (outcome === 'ok') {
        this.counts.actedAsAnother++;
        this.#incident(`${instance.agentId} acted as another agent`);
        return;
      }
    }
    switch (outcome) {
      case 'ok':
        this.counts.toolCallsOk++;
        return;
      case 'unauthenticated':
        if (this.#isExcused(instance.slot, atMs)) this.counts.unauthenticatedExcused++;
        else {
          this.counts.unauthenticatedCounted++;
          this.#incident(`${instance.agentId} on host ${instance.slot} got UNAUTHENTICATED at +${atMs} ms ${detail}`);
        }
        return;
      case 'permission-denied':
        this.counts.refusedAsItself++;
        this.#incident(`${instance.agentId} refused acting as itself ${detail}`);
        return;
      case 'unavailable':
        this.counts.toolCallsUnavailable++;
        return;
      default:
        this.counts.toolCallsOther++;
        this.#incident(`${instance.agentId}: ${detail}`);
    }
  }

  /** WhoAmI, as itself, named incarnation `incarnation` (the control plane's, from the token it accepted). */
  onIncarnation(instance: AgentInstance, incarnation: number): void {
    if (instance.isDead || instance.incarnations.size >= 100) return;
    instance.incarnations.add(incarnation);
  }

  /** WhoAmI named someone else. */
  onWrongIdentity(instance: AgentInstance, named: string): void {
    if (instance.isDead) return;
    this.counts.wrongIdentity++;
    this.#incident(`${instance.agentId} was told it is ${named}`);
  }

  /** The host's own heartbeat loop for an agent on `slot` got UNAUTHENTICATED. */
  onHostHeartbeatUnauthenticated(slot: number, agentId: string, atMs: number): void {
    if (this.#isExcused(slot, atMs)) this.counts.hostHeartbeatUnauthenticatedExcused++;
    else {
      this.counts.hostHeartbeatUnauthenticatedCounted++;
      this.#incident(`host ${slot}'s heartbeat for ${agentId} got UNAUTHENTICATED at +${atMs} ms`);
    }
  }

  /** Final accounting, once the load has stopped and delivery has settled. Idempotent. */
  finish(): void {
    const c = this.counts;
    c.messagesDelivered = 0;
    c.messagesLost = 0;
    c.seqsMissing = 0;
    c.sendOrderMismatches = 0;
    c.deliveredUnconfirmed = 0;
    for (const [agentId, record] of this.#agents) {
      c.messagesDelivered += record.uniqueDelivered;
      let previousSeq = 0;
      for (let index = 0; index < record.confirmed; index++) {
        const seq = record.seqOfIndex.get(index);
        if (seq === 0) continue;
        if (seq <= previousSeq) {
          c.sendOrderMismatches++;
          this.#incident(`${agentId}: message ${index} got seq ${seq}, after seq ${previousSeq}`);
        }
        previousSeq = seq;
        if (record.receipts.get(seq) === 0) {
          c.messagesLost++;
          this.#incident(`${agentId}: message ${index} (seq ${seq}) never arrived`);
        } else if (record.indexAtSeq.get(seq) !== index + 1) {
          c.contentMismatches++;
          this.#incident(`${agentId}: seq ${seq} carried message ${record.indexAtSeq.get(seq) - 1}, not ${index}`);
        }
      }
      for (let seq = 1; seq <= record.maxSeqSeen; seq++) {
        if (record.receipts.get(seq) === 0) {
          c.seqsMissing++;
          this.#incident(`${agentId}: seq ${seq} never arrived though later ones did`);
        } else if (record.indexAtSeq.get(seq) - 1 >= record.confirmed) {
          c.deliveredUnconfirmed++;
        }
      }
    }
  }

  /**
   * Two live, valid copies of one agent, judged at the end over every pair
   * of its instances (sound: only what certainly happened counts):
   * - RECEIPTS: the stretches [first receipt, last receipt] of two instances
   *   overlap: each began strictly before the other ended. Receipt times are when the module was handed the
   *   message, in this process: exact. An agent is one copy taking messages
   *   one at a time; a move starts the new copy only after the old one was
   *   fenced, so redelivery after a move never overlaps.
   * - VALIDITY: a call that succeeded was accepted somewhere in [its start,
   *   its end]. So an instance was accepted at or before `okFromMs` (the
   *   earliest end of a successful call) and at or after `okToMs` (the latest
   *   start of one). If A.okFromMs < B.okToMs and B.okFromMs < A.okToMs, A was
   *   accepted at some α1 ≤ A.okFromMs and α2 ≥ A.okToMs, B at β1, β2 alike,
   *   and α1 < β2, β1 < α2: the stretches [α1, α2] and [β1, β2] overlap, and
   *   since a fenced incarnation never becomes valid again, each was valid
   *   throughout its own: both at once.
   * Only calls and receipts of live instances are recorded (a crashed host's
   *   agents are dead at the crash; a stopped one is over at its abort).
   * Also: a move (another slot) must come with a new incarnation, when WhoAmI
   * named one on both sides.
   */
  judgeOverlaps(): void {
    for (const [agentId, record] of this.#agents) {
      const all = record.instances;
      for (let i = 0; i < all.length; i++) {
        for (let j = i + 1; j < all.length; j++) {
          const a = all[i] as AgentInstance;
          const b = all[j] as AgentInstance;
          const name = (x: AgentInstance): string => `host ${x.slot}#${x.hostIncarnation} (start ${all.indexOf(x) + 1})`;
          if (!Number.isNaN(a.firstReceiptAtMs) && !Number.isNaN(b.firstReceiptAtMs)) {
            if (a.firstReceiptAtMs < b.lastReceiptAtMs && b.firstReceiptAtMs < a.lastReceiptAtMs) {
              this.counts.overlappingReceipts++;
              this.#incident(
                `${agentId} took messages on ${name(a)} from +${a.firstReceiptAtMs} to +${a.lastReceiptAtMs} ms and on ${name(b)} from +${b.firstReceiptAtMs} to +${b.lastReceiptAtMs} ms`,
              );
            }
          }
          if (a.okFromMs < b.okToMs && b.okFromMs < a.okToMs) {
            this.counts.overlappingValidity++;
            this.#incident(
              `${agentId}: calls of ${name(a)} were accepted by +${a.okFromMs} and after +${a.okToMs} ms, calls of ${name(b)} by +${b.okFromMs} and after +${b.okToMs} ms`,
            );
          }
        }
      }
      for (let i = 1; i < all.length; i++) {
        const before = all[i - 1] as AgentInstance;
        const after = all[i] as AgentInstance;
        if (before.slot === after.slot || before.incarnations.size === 0 || after.incarnations.size === 0) continue;
        if (Math.min(...after.incarnations) <= Math.max(...before.incarnations)) {
          this.counts.movesWithoutNewIncarnation++;
          this.#incident(`${agentId} moved from host ${before.slot} to ${after.slot} but WhoAmI named incarnation ${Math.min(...after.incarnations)}, not above ${Math.max(...before.incarnations)}`);
        }
      }
    }
  }

  #record(agentId: string): AgentRecord {
    const record = this.#agents.get(agentId);
    if (record === undefined) throw new Error(`no agent ${agentId} in the ledger`);
    return record;
  }

  #incident(text: string): void {
    if (this.incidents.length < 50) this.incidents.push(text);
  }
}
