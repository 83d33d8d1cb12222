/**
 * `npm run build`: compiles the sources (`common/`, `control-plane/`,
 * `agent-host/`, `gen/`) to JavaScript and declarations in `dist/`
 * (tsconfig.build.json), which is what both binaries and the `tether/tools`
 * export run. Run by `npm ci`/`npm install` (`prepare`), `npm pack`
 * (`prepare`), `npm start` (`prestart`) and the test suite (vitest's
 * globalSetup), so dist/ is never older than the sources it was built from.
 *
 * Incremental (`tsc --build`: about a second when nothing changed), and then
 * made exact, because `tsc --build` trusts its build info alone:
 * - an output that is missing (deleted by hand) forces a full compile;
 * - an output whose source is gone is deleted (it would ship in the tarball);
 * - the descriptor set reflection serves (`gen/descriptors.binpb`, read at
 *   run time beside the compiled `gen/`) is copied when it differs.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative } from 'node:path';

const ROOT = join(import.meta.dirname, '..');
const DIST = join(ROOT, 'dist');
const CONFIG = 'tsconfig.build.json';
/** The folders tsconfig.build.json compiles (its `include`). */
const SOURCE_DIRS = ['common', 'control-plane', 'agent-host', 'gen'];
const BUILD_INFO = join(DIST, '.tsbuildinfo');
/** Files dist/ holds that are not compiled from a source: copied assets, and tsc's build info. */
const ASSETS = ['gen/descriptors.binpb'];

function walk(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name));
}

/** Every output a source file `x.ts` compiles to: `dist/x.js` and `dist/x.d.ts`, relative to dist/. */
function expectedOutputs(): Set<string> {
  const outputs = new Set<string>();
  for (const dir of SOURCE_DIRS) {
    for (const file of walk(join(ROOT, dir))) {
      if (!file.endsWith('.ts') || file.endsWith('.d.ts')) continue;
      const base = relative(ROOT, file).slice(0, -'.ts'.length);
      outputs.add(`${base}.js`).add(`${base}.d.ts`);
    }
  }
  return outputs;
}

function removeEmptyDirs(dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    const path = join(dir, entry.name);
    removeEmptyDirs(path);
    if (readdirSync(path).length === 0) rmdirSync(path);
  }
}

/** Brings dist/ up to date with the sources; throws (tsc's diagnostics on stderr) if they do not compile. */
export function build(): void {
  const expected = expectedOutputs();
  const isComplete = [...expected].every((output) => existsSync(join(DIST, output)));
  if (!isComplete) rmSync(BUILD_INFO, { force: true });
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  const result = spawnSync(process.execPath, [tsc, '--build', CONFIG], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
  if (result.status !== 0) throw new Error(`tsc --build ${CONFIG} failed (status ${result.status ?? result.signal})`);

  const kept = new Set([...expected, ...ASSETS, relative(DIST, BUILD_INFO)]);
  for (const file of walk(DIST)) {
    if (!kept.has(relative(DIST, file))) rmSync(file);
  }
  removeEmptyDirs(DIST);
  for (const asset of ASSETS) {
    const from = join(ROOT, asset);
    const to = join(DIST, asset);
    if (!existsSync(to) || !readFileSync(from).equals(readFileSync(to))) copyFileSync(from, to);
  }
  const missing = [...expected, ...ASSETS].filter((output) => !existsSync(join(DIST, output)));
  if (missing.length > 0) throw new Error(`build: dist/ lacks ${missing.slice(0, 5).join(', ')} after compiling`);
}

if (process.argv[1] !== undefined && import.meta.filename === process.argv[1]) {
  try {
    build();
  } catch (err) {
    console.error(err instanceof Error ? err.message : String(err));
    process.exitCode = 1;
  }
}
