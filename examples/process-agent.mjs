#!/usr/bin/env node
/**
 * An example process agent: a plain Node script, no Tether library, showing the
 * whole contract between an agent host and a process agent (docs/process-agents.md).
 *
 *  - Messages arrive on stdin, one JSON object per line:
 *      {"seq":1,"id":"…","from":"operator","contentType":"text/plain","payload":"<base64>","createdAtMs":…}
 *  - Each is answered on stdout, one JSON object per line: {"ack":1} when taken,
 *    {"nack":1,"error":"why"} when refused (the control plane sends it again
 *    later, and nothing after it is delivered meanwhile). Nothing else may look
 *    like that on stdout; anything else there, and everything on stderr, ends up
 *    in the host's log.
 *  - The host probes the agent's liveness with a line {"ping":N} on stdin; answer
 *    {"pong":N} on stdout soon (the host's --stall-after, 30 s by default), or the
 *    agent is reported `stalled` (a signal to the operator, never a kill) until it
 *    answers again.
 *  - The agent's current token is in the file named by $TETHER_TOKEN_FILE,
 *    replaced atomically at each rotation: read it at the moment of each call,
 *    never keep it. This script only decodes it to show its generation; a real
 *    agent sends it as `authorization: Bearer <token>` to $TETHER_SERVER.
 *  - When stdin ends, exit: the host has stopped the agent or died, and an
 *    agent must not outlive it holding a token.
 *
 * What this one does with a message: prints one line about it on stderr and
 * takes it, except that a payload starting with "retry" is refused the first
 * time its seq is seen (to show a refusal and its re-delivery).
 *
 * Run it on a host that allows it:
 *
 *   agent-host --allow-command "$(command -v node)" …
 *   control-plane agents dispatch --id hello --command "$(command -v node)" --arg "$PWD/examples/process-agent.mjs"
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

const agentId = process.env.TETHER_AGENT_ID ?? '?';
const tokenFile = process.env.TETHER_TOKEN_FILE;
const refusedOnce = new Set();

/** The claims of the current token (decoded, not verified: the control plane verifies it). */
function currentClaims() {
  if (tokenFile === undefined) return undefined;
  try {
    const token = readFileSync(tokenFile, 'utf8').trim();
    const payload = token.split('.')[1] ?? '';
    return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch (err) {
    console.error(`process-agent ${agentId}: cannot read the token file: ${err.message}`);
    return undefined;
  }
}

/** One line on stdout: the host reads acks and nacks there. */
function answer(reply) {
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}

function onLine(line) {
  if (line.trim() === '') return;
  let message;
  try {
    message = JSON.parse(line);
  } catch {
    console.error(`process-agent ${agentId}: not a message: ${line.slice(0, 80)}`);
    return;
  }
  if (typeof message.ping === 'number') {
    answer({ pong: message.ping });
    return;
  }
  const text = Buffer.from(message.payload ?? '', 'base64').toString('utf8');
  const claims = currentClaims();
  const about = `seq ${message.seq} from ${message.from}, ${text.length} bytes, token generation ${claims?.gen ?? '?'}`;
  if (text.startsWith('retry') && !refusedOnce.has(message.seq)) {
    refusedOnce.add(message.seq);
    console.error(`process-agent ${agentId}: ${about}: refused (asked to retry)`);
    answer({ nack: message.seq, error: 'asked to retry' });
    return;
  }
  console.error(`process-agent ${agentId}: ${about}: acked`);
  answer({ ack: message.seq });
}

const claims = currentClaims();
console.error(`process-agent ${agentId}: started (pid ${process.pid}, token generation ${claims?.gen ?? '?'})`);

// The host gone (its end of the pipe closed) shows up as EPIPE here: stop.
process.stdout.on('error', () => process.exit(1));
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', onLine);
lines.on('close', () => {
  console.error(`process-agent ${agentId}: stdin closed; exiting`);
  process.exit(0);
});
