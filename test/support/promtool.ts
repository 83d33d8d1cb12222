import { spawnSync } from 'node:child_process';

/** What a promtool run printed and how it ended. */
export interface PromtoolResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Whether `promtool` (Debian package `prometheus`) can be run. Missing, a test
 * that needs it is skipped loudly on a workstation, and fails under CI
 * (`CI=true`), where `.ci/run` installs it.
 */
export function hasPromtool(): boolean {
  const found = spawnSync('promtool', ['--version'], { encoding: 'utf8' }).status === 0;
  if (found) return true;
  if (process.env.CI === 'true') throw new Error('promtool is missing under CI: .ci/run installs it (apt-get install prometheus)');
  console.warn('\n*** promtool not found: SKIPPING the promtool checks (install the Debian package `prometheus`) ***\n');
  return false;
}

/** Runs `promtool args…` with `input` on its stdin. */
export function promtool(args: readonly string[], input?: string): PromtoolResult {
  const result = spawnSync('promtool', args, { encoding: 'utf8', input, timeout: 60_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** One sample's value from Prometheus text (`name` with its labels, as printed), or undefined if absent. */
export function sample(text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

/**
 * The metric names a Prometheus text page exports: each family from its
 * `# TYPE` line, with `_bucket`, `_sum` and `_count` for histograms (and
 * `_sum`, `_count` for summaries), as a query may name them.
 */
export function exportedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const match = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (match === null) continue;
    const [, name, type] = match as unknown as [string, string, string];
    names.add(name);
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(name + suffix);
    if (type === 'summary') for (const suffix of ['_sum', '_count']) names.add(name + suffix);
  }
  return names;
}
