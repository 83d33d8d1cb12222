/**
 * docs/operations.md lists every flag of both binaries with its environment
 * variable, and nothing they do not have; the README's short tables name only
 * flags (and variables) that exist. The options are read from the commander
 * programs themselves, so a new flag without a row, or a row for a flag that
 * went, fails here.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { agentHostProgram } from '../../agent-host/main.js';
import { controlPlaneProgram } from '../../control-plane/main.js';

const ROOT = join(import.meta.dirname, '..', '..');

/** The rows of every table in `file`, by the heading they are under: each row's flags (first cell) and variables (second cell). */
function tableRows(file: string): Map<string, { flags: string[]; envs: string[] }[]> {
  const byHeading = new Map<string, { flags: string[]; envs: string[] }[]>();
  let heading = '';
  for (const line of readFileSync(join(ROOT, file), 'utf8').split('\n')) {
    if (/^#{1,6} /.test(line)) heading = line.replace(/^#+ /, '');
    if (!line.startsWith('| `--')) continue;
    const [first = '', second = ''] = line.split(' | ');
    const rows = byHeading.get(heading) ?? [];
    rows.push({ flags: [...first.matchAll(/`(--[a-z][a-z-]*)/g)].map((m) => m[1] ?? ''), envs: [...second.matchAll(/TETHER_[A-Z_]+/g)].map((m) => m[0]) });
    byHeading.set(heading, rows);
  }
  return byHeading;
}

/** `command`'s own options (not help/version): long flag → its environment variable. */
function optionsOf(command: Command): Map<string, string | undefined> {
  return new Map(command.options.filter((o) => o.long !== undefined && o.long !== '--help' && o.long !== '--version').map((o) => [o.long?.replace(/^--no-/, '--') ?? '', o.envVar]));
}

/** The flags and variables of `rows`, as one map (flag → the variable its row names first, if any). */
function documented(rows: { flags: string[]; envs: string[] }[]): Map<string, string | undefined> {
  const map = new Map<string, string | undefined>();
  for (const row of rows) row.flags.forEach((flag, i) => map.set(flag, row.envs[i] ?? row.envs[0]));
  return map;
}

const program = controlPlaneProgram();
const serve = program.commands.find((c) => c.name() === 'serve');
const host = agentHostProgram(() => Promise.resolve());

describe('docs/operations.md', () => {
  const tables = tableRows('docs/operations.md');
  const cases: [heading: string, command: Command | undefined][] = [
    ['Options of every `control-plane` command', program],
    ['`control-plane serve`', serve],
    ['`agent-host`', host],
  ];

  it.each(cases)('"%s" lists exactly the options the program has, each with its variable', (heading, command) => {
    expect(command).toBeDefined();
    const options = optionsOf(command as Command);
    const rows = documented(tables.get(heading) ?? []);
    expect([...rows.keys()].sort()).toEqual([...options.keys()].sort());
    for (const [flag, envVar] of options) expect(rows.get(flag), flag).toBe(envVar);
  });
});

describe('README.md', () => {
  it('its short flag tables name flags and variables that exist', () => {
    const rows = tableRows('README.md').get('Binaries') ?? [];
    expect(rows.length).toBeGreaterThan(10);
    const all = [optionsOf(program), optionsOf(serve as Command), optionsOf(host)];
    for (const row of rows) {
      for (const flag of row.flags) expect(all.some((options) => options.has(flag)), flag).toBe(true);
      for (const env of row.envs) expect(all.some((options) => [...options.values()].includes(env)), env).toBe(true);
    }
  });
});
