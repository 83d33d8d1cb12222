/**
 * `npm run bench [-- --quick] [-- --rounds N] [names…]`: runs the benchmarks
 * one after the other, each in a process of its own (so none inherits
 * another's heap or JIT state; `memory` gets `--expose-gc`), passes their
 * output through, and ends with a table of their results and one JSON line
 * holding every result. Exits non-zero if any benchmark failed.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseResultLine, type BenchResult } from './bench-cli.js';
import { printTable } from './bench-support.js';

/** Every benchmark, in the order `npm run bench` runs them. */
export const BENCHMARKS = ['delivery-throughput', 'delivery-latency', 'tool-calls', 'rotation-storm', 'memory', 'startup'] as const;

async function runOne(name: string, passArgs: string[]): Promise<{ result: BenchResult | undefined; code: number | null; seconds: number }> {
  const startedMs = performance.now();
  const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', join(import.meta.dirname, `${name}.ts`), ...passArgs], { stdio: ['ignore', 'pipe', 'inherit'] });
  let tail = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    process.stdout.write(chunk);
    tail = (tail + chunk).slice(-64 * 1024);
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode)));
  return { result: parseResultLine(tail), code, seconds: (performance.now() - startedMs) / 1000 };
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({ args: process.argv.slice(2), options: { quick: { type: 'boolean' }, rounds: { type: 'string' } }, allowPositionals: true, strict: true });
  const unknown = positionals.filter((name) => !(BENCHMARKS as readonly string[]).includes(name));
  if (unknown.length > 0) throw new Error(`unknown benchmark ${unknown.join(', ')} (known: ${BENCHMARKS.join(', ')})`);
  const names = positionals.length > 0 ? positionals : [...BENCHMARKS];
  const passArgs = [...(values.quick === true ? ['--quick'] : []), ...(values.rounds === undefined ? [] : ['--rounds', values.rounds])];
  const rows: string[][] = [['benchmark', 'ratio', 'seconds', 'exit']];
  const results: BenchResult[] = [];
  let isFailed = false;
  for (const name of names) {
    console.log(`\n=== ${name} ${passArgs.join(' ')}`);
    const { result, code, seconds } = await runOne(name, passArgs);
    if (result !== undefined) results.push(result);
    if (code !== 0 || result === undefined) isFailed = true;
    rows.push([name, result?.ratio === undefined || result.ratio === null ? '—' : String(result.ratio), seconds.toFixed(0), String(code)]);
  }
  console.log('');
  printTable(rows);
  console.log(JSON.stringify({ name: 'bench', ratio: null, quick: values.quick === true, results }));
  if (isFailed) process.exitCode = 1;
}

await main();
