import { describe, expect, it } from 'vitest';
import { parseBenchArgs, parseResultLine, quantile, resultLine, roundOrder, summarize } from '../../../scripts/bench/bench-cli.js';

describe('parseBenchArgs', () => {
  const defaults = { agents: [100_000, 5_000], hosts: [1_000, 50] } as const;

  it('takes the full sizes by default and the quick ones with --quick, at least 3 rounds', () => {
    expect(parseBenchArgs([], defaults)).toEqual({ isQuick: false, rounds: 3, counts: { agents: 100_000, hosts: 1_000 }, stores: ['sqlite'] });
    expect(parseBenchArgs(['--quick'], defaults)).toEqual({ isQuick: true, rounds: 3, counts: { agents: 5_000, hosts: 50 }, stores: ['sqlite'] });
  });

  it('lets a flag override the size, quick or not', () => {
    expect(parseBenchArgs(['--quick', '--agents', '200', '--rounds', '5'], defaults)).toEqual({ isQuick: true, rounds: 5, counts: { agents: 200, hosts: 50 }, stores: ['sqlite'] });
  });

  it('takes a list of stores to compare in one run', () => {
    expect(parseBenchArgs(['--store', 'sqlite,postgres://u@db:5432/t']).stores).toEqual(['sqlite', 'postgres://u@db:5432/t']);
    expect(parseBenchArgs(['--store', 'postgres://u@db/t']).stores).toEqual(['postgres://u@db/t']);
  });

  it.each([
    [['--rounds', '2']],
    [['--agents', '0']],
    [['--agents', '-3']],
    [['--agents', '1.5']],
    [['--agents', 'many']],
    [['--unknown']],
    [['positional']],
    [['--store', 'mysql://db']],
    [['--store', 'sqlite,']],
    [['--store', 'sqlite,sqlite']],
  ])('refuses %j', (argv) => {
    expect(() => parseBenchArgs(argv, defaults)).toThrow();
  });
});

describe('summaries', () => {
  it('gives the median, range and spread', () => {
    expect(summarize([30, 10, 20])).toEqual({ median: 20, min: 10, max: 30, spreadPct: 100 });
    expect(summarize([4, 1, 3, 2]).median).toBe(2);
    expect(Number.isNaN(summarize([]).median)).toBe(true);
  });

  it('takes quantiles by nearest rank', () => {
    const values = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(quantile(values, 0.5)).toBe(50);
    expect(quantile(values, 0.99)).toBe(99);
    expect(quantile(values, 1)).toBe(100);
  });

  it('rotates the order of the variants each round', () => {
    expect(roundOrder(['a', 'b', 'c'], 1)).toEqual(['a', 'b', 'c']);
    expect(roundOrder(['a', 'b', 'c'], 2)).toEqual(['b', 'c', 'a']);
    expect(roundOrder(['a', 'b'], 3)).toEqual(['a', 'b']);
  });
});

describe('the JSON last line', () => {
  it('is one line with the name and ratio first, read back from the end of the output', () => {
    const line = resultLine('tool-calls', 0.91234, { calls: 100, nested: { a: 1 } });
    expect(line).not.toContain('\n');
    expect(Object.keys(JSON.parse(line) as object).slice(0, 2)).toEqual(['name', 'ratio']);
    expect(parseResultLine(`| table |\n${line}\n`)).toEqual({ name: 'tool-calls', ratio: 0.912, calls: 100, nested: { a: 1 } });
  });

  it('is not found when the output ends otherwise', () => {
    expect(parseResultLine('{"name":"x","ratio":1}\nError: boom')).toBeUndefined();
    expect(parseResultLine('{"ratio":1}')).toBeUndefined();
    expect(parseResultLine('{"name":"x","ratio":"1"}')).toBeUndefined();
    expect(parseResultLine('')).toBeUndefined();
  });
});
