/**
 * `npm run mutations [-- --only NAME] [--files]`: proves the suite bites.
 *
 * Each mutation below is a defect the suite once let through (every one of them
 * passed the whole `npm test`). For each, this script checks out the current
 * commit into a scratch folder, applies that one change (an exact text that
 * must occur exactly once, so a mutation that no longer applies is an error,
 * never a silent pass), runs `npm test` there, and expects it to FAIL. It
 * prints one line per mutation and exits 1 if any mutation survived or did not
 * apply. With --files it runs only the test files named with the mutation
 * (quicker, for iterating; the full run is what proves the claim).
 *
 * Run on purpose, not in CI: the full run is one `npm test` per mutation.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stripVTControlCharacters } from 'node:util';

interface Mutation {
  name: string;
  file: string;
  /** Exact text that must occur once in `file`. */
  find: string;
  replace: string;
  /** Test files that should catch it (for --files). */
  tests: string[];
}

/** The six mutations issue 12 named: each passed the whole suite before its tests were written. */
const MUTATIONS: Mutation[] = [
  {
    name: 'placement-ignores-labels',
    file: 'control-plane/agents/placement.ts',
    find: ' || !carriesLabels(candidate, constraint.labels)) continue;',
    replace: ') continue;',
    tests: ['test/control-plane/agents/placement.test.ts', 'test/e2e/placement.test.ts'],
  },
  {
    name: 'placement-ignores-capacity',
    file: 'control-plane/agents/placement.ts',
    find: 'return candidate.capacity <= 0 || candidate.load < candidate.capacity;',
    replace: 'return true;',
    tests: ['test/control-plane/agents/placement.test.ts', 'test/e2e/placement.test.ts'],
  },
  {
    name: 'acked-prune-is-a-no-op',
    file: 'control-plane/store/sqlite-store.ts',
    find: "DELETE FROM messages WHERE state IN ('acked', 'requeued') AND created_at_ms < ?",
    replace: "DELETE FROM messages WHERE state IN ('acked', 'requeued') AND 0 AND created_at_ms < ?",
    tests: ['test/e2e/retention.test.ts', 'test/control-plane/store/store-contract.sqlite.test.ts'],
  },
  {
    name: 'stream-writer-never-waits-for-drain',
    file: 'common/stream-writer.ts',
    find: 'if (!hasRoom) {',
    replace: 'if (hasRoom && !hasRoom) {',
    tests: ['test/common/stream-writer.test.ts', 'test/control-plane/delivery/delivery-bounds.test.ts'],
  },
  {
    name: 'heartbeat-ledger-never-forgets',
    file: 'control-plane/services/heartbeat-ledger.ts',
    find: 'this.#lastMs.delete(agentId);',
    replace: 'this.#lastMs.get(agentId);',
    tests: ['test/e2e/heartbeat-ledger.test.ts'],
  },
  {
    name: 'clock-skew-always-zero',
    file: 'control-plane/hosts/host-service.ts',
    find: 'session.clockSkewMs = Math.round(pong.timeMs - (sentAtMs + nowMs) / 2);',
    replace: 'session.clockSkewMs = Math.round(0 * (pong.timeMs - (sentAtMs + nowMs) / 2));',
    tests: ['test/e2e/clock-skew.test.ts'],
  },
];

function run(command: string, args: string[], cwd: string): { status: number; output: string } {
  const result = spawnSync(command, args, { cwd, encoding: 'utf8', env: { ...process.env, CI: 'true' }, maxBuffer: 256 * 1024 * 1024 });
  return { status: result.status ?? 1, output: `${result.stdout}${result.stderr}` };
}

function main(): void {
  const args = process.argv.slice(2);
  const onlyIndex = args.indexOf('--only');
  const only = onlyIndex >= 0 ? args[onlyIndex + 1] : undefined;
  const isFilesOnly = args.includes('--files');
  const root = run('git', ['rev-parse', '--show-toplevel'], process.cwd()).output.trim();
  const selected = MUTATIONS.filter((m) => only === undefined || m.name === only);
  if (selected.length === 0) {
    console.error(only === undefined ? 'no mutations defined' : `no mutation named ${only}`);
    process.exit(2);
  }
  const scratch = mkdtempSync(join(tmpdir(), 'tether-mutations-'));
  const tree = join(scratch, 'tree');
  let survived = 0;
  try {
    const added = run('git', ['worktree', 'add', '--detach', tree, 'HEAD'], root);
    if (added.status !== 0) throw new Error(`git worktree add failed: ${added.output}`);
    symlinkSync(join(root, 'node_modules'), join(tree, 'node_modules'));
    for (const mutation of selected) {
      run('git', ['checkout', '--', '.'], tree);
      const path = join(tree, mutation.file);
      const source = readFileSync(path, 'utf8');
      const occurrences = source.split(mutation.find).length - 1;
      if (occurrences !== 1) {
        console.log(`NOT APPLIED  ${mutation.name}: its text occurs ${occurrences} times in ${mutation.file}`);
        survived += 1;
        continue;
      }
      writeFileSync(path, source.replace(mutation.find, mutation.replace));
      const startedAt = performance.now();
      const result = isFilesOnly ? run('npx', ['vitest', 'run', ...mutation.tests], tree) : run('npm', ['test'], tree);
      const seconds = ((performance.now() - startedAt) / 1000).toFixed(0);
      const failed = stripVTControlCharacters(result.output).match(/^\s*(FAIL\s|×).*$/gm)?.slice(0, 3).map((line) => line.trim()) ?? [];
      if (result.status === 0) {
        survived += 1;
        console.log(`SURVIVED     ${mutation.name} (${seconds} s): the suite passed with it`);
      } else {
        console.log(`KILLED       ${mutation.name} (${seconds} s): ${failed.join(' | ')}`);
      }
    }
  } finally {
    run('git', ['worktree', 'remove', '--force', tree], root);
    rmSync(scratch, { recursive: true, force: true });
  }
  console.log(survived === 0 ? `all ${selected.length} mutations killed` : `${survived} of ${selected.length} mutations survived or did not apply`);
  process.exit(survived === 0 ? 0 : 1);
}

main();
