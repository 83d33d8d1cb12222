/**
 * Every metric the shipped alert rules and Grafana dashboard name is one the
 * binaries export: the names are collected from the real `/metrics` pages of a
 * control plane and a host started here (histograms with their `_bucket`,
 * `_sum` and `_count`), so a renamed metric breaks this test, not a page at 3 am.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { load } from 'js-yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostMetrics } from '../../agent-host/metrics.js';
import { serveMetrics } from '../../common/metrics-http.js';
import { Harness } from '../support/harness.js';
import { exportedNames } from '../support/promtool.js';

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

  it('every alert rule names only exported metrics, and at least one', () => {
    const expressions = alertExpressions();
    expect(expressions.length).toBeGreaterThanOrEqual(8);
    for (const { where, expr } of expressions) {
      const names = metricNamesIn(expr);
      expect({ where, hasMetric: names.length > 0 }).toEqual({ where, hasMetric: true });
      expect({ where, unknown: names.filter((n) => !exported.has(n)) }).toEqual({ where, unknown: [] });
    }
  });
});
