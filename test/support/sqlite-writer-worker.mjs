// A second connection that writes to a store without pause, in its own thread, so a backup in the
// test's thread runs under a concurrent writer. Commits one row at a time until told to stop
// (a shared flag), bounded in count and time so it always ends by itself.
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';

const { path, stop, agentId, maxWrites, maxMs } = workerData;
const flag = new Int32Array(stop);
const db = new Database(path);
db.pragma('busy_timeout = 5000');
const lastSeq = db.prepare('SELECT last_seq FROM agents WHERE agent_id = ?').get(agentId).last_seq;
const insert = db.prepare(
  `INSERT INTO messages (agent_id, seq, id, sender, content_type, payload, created_at_ms, state, attempts, last_error, idempotency_key)
   VALUES (?, ?, ?, 'writer', 'text/plain', x'00', 0, 'pending', 0, '', NULL)`,
);
const bump = db.prepare('UPDATE agents SET last_seq = ? WHERE agent_id = ?');
const write = db.transaction((seq) => {
  insert.run(agentId, seq, `w-${seq}`);
  bump.run(seq, agentId);
});
const startedAt = performance.now();
let writes = 0;
while (Atomics.load(flag, 0) === 0 && writes < maxWrites && performance.now() - startedAt < maxMs) {
  writes += 1;
  write(lastSeq + writes);
  if (writes === 1) parentPort.postMessage({ started: true });
}
db.close();
// Whether the test stopped it (the backup finished while it wrote) or it ran out its bounds.
parentPort.postMessage({ writes, isStoppedByTest: Atomics.load(flag, 0) !== 0 });
