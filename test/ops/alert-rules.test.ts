/**
 * The shipped alert rules (ops/prometheus/tether-alerts.yml): `promtool check
 * rules` takes them, `promtool test rules` passes, and the test file has, for
 * every alert, a case in which it fires and one in which it does not.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { load } from 'js-yaml';
import { describe, expect, it } from 'vitest';
import { hasPromtool, promtool } from '../support/promtool.js';

const DIR = join(import.meta.dirname, '..', '..', 'ops', 'prometheus');
const RULES = join(DIR, 'tether-alerts.yml');
const TESTS = join(DIR, 'tether-alerts.test.yml');

interface RuleFile {
  groups: { name: string; rules: { alert?: string; expr: string }[] }[];
}
interface RuleTestFile {
  rule_files: string[];
  tests: { name: string; alert_rule_test?: { alertname: string; exp_alerts?: unknown[] | null }[] }[];
}

/** The alert names of the rule file. */
function alertNames(): string[] {
  const rules = load(readFileSync(RULES, 'utf8')) as RuleFile;
  return rules.groups.flatMap((g) => g.rules.flatMap((r) => (r.alert === undefined ? [] : [r.alert])));
}

describe('alert rules', () => {
  it('has, for every alert, a promtool case where it fires and one where it does not', () => {
    const tests = load(readFileSync(TESTS, 'utf8')) as RuleTestFile;
    expect(tests.rule_files).toEqual(['tether-alerts.yml']);
    const cases = tests.tests.flatMap((t) => t.alert_rule_test ?? []);
    const names = alertNames();
    expect(names.length).toBeGreaterThanOrEqual(8);
    for (const name of names) {
      const own = cases.filter((c) => c.alertname === name);
      expect({ name, fires: own.some((c) => (c.exp_alerts ?? []).length > 0) }).toEqual({ name, fires: true });
      expect({ name, quiet: own.some((c) => (c.exp_alerts ?? []).length === 0) }).toEqual({ name, quiet: true });
    }
    // No case names an alert that does not exist (it would test nothing).
    for (const c of cases) expect(names).toContain(c.alertname);
  });

  describe.runIf(hasPromtool())('under promtool', () => {
    it('passes promtool check rules', () => {
      const result = promtool(['check', 'rules', RULES]);
      expect({ status: result.status, stderr: result.stderr }).toEqual({ status: 0, stderr: '' });
      expect(result.stdout).toContain(`SUCCESS: ${alertNames().length} rules found`);
    });

    it('passes promtool test rules', () => {
      const result = promtool(['test', 'rules', TESTS]);
      expect({ status: result.status, output: result.stdout + result.stderr }).toEqual({ status: 0, output: expect.stringContaining('SUCCESS') });
    });
  });
});
