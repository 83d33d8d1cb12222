/**
 * Every metric the shipped alert rules and Grafana dashboard name is one the
 * binaries export: the names are collected from the real `/metrics` pages of a
 * control plane and a host started here (histograms with their `_bucket`,
 * `_sum` and `_count`), so a renamed metric breaks this test, not a page at 3 am.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump, load } from 'js-yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostMetrics } from '../../agent-host/metrics.js';
import { serveMetrics } from '../../common/metrics-http.js';
import { Harness } from '../support/harness.js';
import { exportedNames, hasPromtool, promtool } from '../support/promtool.js';

const OPS = join(import.meta.dirname, '..', '..', 'ops');

/** The `tether_…` metric names a PromQL expression mentions. */
function metricNamesIn(expr: string): string[] {
  return [...new Set(expr.match(/\btether_[A-Za-z0-9_:]*/g) ?? [])];
}

/** Every alerting rule's name and expression. */
function alertExpressions(): { where: string; expr: string }[] {
  const rules = load(readFileSync(join(OPS, 'prometheus', 'tether-alerts.yml'), 'utf8')) as { groups: { rules: { alert?: string; record?: string; expr: string }[] }[] };
  return rules.groups.flatMap((g) => g.rules.map((r) => ({ where: `rule ${r.alert ?? r.record ?? '?'}`, expr: r.expr })));
}

interface Panel {
  id: number;
  type: string;
  title: string;
  targets?: { expr?: string; refId: string }[];
  panels?: Panel[];
}

/** The dashboard, parsed (a syntax error fails here). */
function dashboard(): { uid: string; panels: Panel[]; templating: { list: { name: string; type: string; definition?: string }[] } } {
  return JSON.parse(readFileSync(join(OPS, 'grafana', 'tether-dashboard.json'), 'utf8')) as ReturnType<typeof dashboard>;
}

/** Every panel of the dashboard, those inside rows included. */
function allPanels(panels: readonly Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

/** Every expression of the dashboard: each panel target's, and each query variable's. */
function dashboardExpressions(): { where: string; expr: string }[] {
  const parsed = dashboard();
  const targets = allPanels(parsed.panels).flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr ?? '' })));
  const variables = parsed.templating.list.filter((v) => v.type === 'query').map((v) => ({ where: `variable ${v.name}`, expr: v.definition ?? '' }));
  return [...targets, ...variables];
}

describe('metric names of the shipped alert rules and dashboard', () => {
  let harness: Harness | undefined;
  let exported = new Set<string>();
  const closers: (() => Promise<void> | void)[] = [];

  beforeAll(async () => {
    harness = await Harness.start({ httpAddress: '127.0.0.1:0' });
    const { host } = await harness.startHost('named');
    const metrics = createHostMetrics(host);
    closers.push(metrics.close);
    const server = await serveMetrics(metrics.registry, '127.0.0.1:0', harness.logs.logger);
    closers.push(server.close);
    for (const port of [harness.cp.httpPort, server.port]) {
      const response = await fetch(`http://127.0.0.1:${port}/metrics`);
      expect(response.status).toBe(200);
      for (const name of exportedNames(await response.text())) exported.add(name);
    }
  });

  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    await harness?.close();
    harness = undefined;
    exported = new Set();
  });

  it('collects the names from the pages, histogram series included', () => {
    expect(exported).toContain('tether_agent_lowest_token_ttl_seconds');
    expect(exported).toContain('tether_host_lowest_token_ttl_seconds');
    expect(exported).toContain('tether_delivery_latency_seconds_bucket');
    // A name neither binary exports is not in the set (the check below could fail).
    expect(exported).not.toContain('tether_no_such_metric');
    expect(metricNamesIn('sum(rate(tether_no_such_metric_total[5m])) > tether_x')).toEqual(['tether_no_such_metric_total', 'tether_x']);
  });

  it.each([
    ['alert rule', alertExpressions],
    ['dashboard', dashboardExpressions],
  ])('every %s expression names only exported metrics, and at least one', (_what, expressions) => {
    expect(expressions().length).toBeGreaterThanOrEqual(8);
    for (const { where, expr } of expressions()) {
      const names = metricNamesIn(expr);
      expect({ where, hasMetric: names.length > 0 }).toEqual({ where, hasMetric: true });
      expect({ where, unknown: names.filter((n) => !exported.has(n)) }).toEqual({ where, unknown: [] });
    }
  });

  it('the dashboard has unique panel ids, and every panel other than a row queries something', () => {
    const panels = allPanels(dashboard().panels);
    expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
    for (const panel of panels.filter((p) => p.type !== 'row')) {
      expect({ panel: panel.title, targets: (panel.targets ?? []).filter((t) => (t.expr ?? '') !== '').length > 0 }).toEqual({ panel: panel.title, targets: true });
    }
  });

  it.runIf(hasPromtool())('every dashboard panel expression is valid PromQL (promtool, as recording rules)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tether-dashboard-'));
    try {
      const targets = dashboardExpressions().filter((e) => !e.where.startsWith('variable'));
      // Grafana's variables sit inside label matchers' strings ("$cp"), which PromQL takes as they are.
      const rules = { groups: [{ name: 'dashboard', rules: targets.map((t, i) => ({ record: `tether_dashboard:expr_${i}`, expr: t.expr })) }] };
      const file = join(dir, 'dashboard-rules.yml');
      writeFileSync(file, dump(rules));
      const result = promtool(['check', 'rules', file]);
      expect({ status: result.status, stderr: result.stderr }).toEqual({ status: 0, stderr: '' });
      expect(result.stdout).toContain(`SUCCESS: ${targets.length} rules found`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
