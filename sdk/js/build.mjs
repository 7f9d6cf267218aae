#!/usr/bin/env node
// Builds a Node.js-style JavaScript HTTP service into a wasi:http proxy component.
//
//   node build.mjs <entry.js> <out.wasm>
//
// 1. esbuild bundles <entry.js> (ESM or CommonJS) into one ES module, with the
//    Node built-ins Shoal supports (http, os, events, buffer, util, url,
//    querystring, process) replaced by the small shims in ./shims, plus a
//    Node-like console and the Buffer/process/setImmediate globals.
// 2. componentize-js (StarlingMonkey) turns that module into a component for
//    the world `shoal:js/service` in ./wit (wasi:http/proxy@0.2.10 +
//    wasi:cli/environment).
// 3. An app that imports `http` gets the shim's `incomingHandler` as the
//    component's wasi:http/incoming-handler export (so one instance serves
//    request after request), and the component gets a `shoal:instances`
//    custom section saying so: Shoal then reuses its instances by default.
//    Any other app (a fetch-event handler, say) is left as it is, unmarked.
//
// IMPORTANT: the app's top-level code runs HERE, at build time, inside the
// Wizer snapshot (that is how componentize-js pre-initializes the engine).
// So its startup output (e.g. "Kubia server starting...") is printed by this
// build (on stdout), not when a replica starts, and anything it computes at
// top level (environment, time, random numbers) is frozen into the component.
// Calling WASI imports at top level is impossible there; the shims fall back
// and print a "[shoal-sdk-js] warning" instead.
//
// Runs from any cwd: esbuild and componentize-js are resolved from the
// node_modules next to this file (`npm ci` in this directory installs them).

import { existsSync, statSync, realpathSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { basename, dirname, extname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const SHIMS = join(HERE, 'shims');
const WIT = join(HERE, 'wit');
const WORLD = 'service';

/** Node built-ins that resolve to a shim (with or without the `node:` prefix). */
const SHIMMED = {
  http: 'http.js',
  os: 'os.js',
  events: 'events.cjs',
  buffer: 'buffer.js',
  util: 'util.js',
  url: 'url.js',
  querystring: 'querystring.js',
  process: 'process.js',
};

export class BuildError extends Error {}

async function loadDeps() {
  try {
    const esbuild = await import('esbuild');
    const { componentize } = await import('@bytecodealliance/componentize-js');
    return { esbuild, componentize };
  } catch (err) {
    if (err && err.code === 'ERR_MODULE_NOT_FOUND') {
      throw new BuildError(`dependencies of shoal-sdk-js are not installed: run \`npm ci\` in ${HERE}\n(${err.message})`);
    }
    throw err;
  }
}

function displayPath(file) {
  const abs = resolve(HERE, file); // esbuild paths are relative to absWorkingDir
  const rel = relative(process.cwd(), abs);
  return rel && !rel.startsWith('..') && process.cwd() !== '/' ? rel : abs;
}

function formatMessage(kind, m) {
  const loc = m.location;
  let s = loc ? `${displayPath(loc.file)}:${loc.line}:${loc.column + 1}: ${kind}: ${m.text}` : `${kind}: ${m.text}`;
  if (loc && loc.lineText) s += `\n    ${loc.lineText}`;
  for (const n of m.notes || []) {
    // esbuild's "mark it as external" advice does not apply: the bundle must be self-contained.
    if (n.text && !n.text.startsWith('You can mark the path')) s += `\n  note: ${n.text}`;
  }
  return s;
}

const shimPlugin = {
  name: 'shoal-node-builtins',
  setup(build) {
    const builtins = new Set(builtinModules);
    build.onResolve({ filter: /^(node:)?[a-z_][a-z_0-9/]*$/ }, (args) => {
      const name = args.path.replace(/^node:/, '');
      if (Object.hasOwn(SHIMMED, name)) return { path: join(SHIMS, SHIMMED[name]) };
      if (args.path.startsWith('node:') || builtins.has(name)) {
        return {
          errors: [
            {
              text:
                `Node.js built-in module "${args.path}" is not available in Shoal JS services ` +
                `(supported: ${Object.keys(SHIMMED).join(', ')}; use fetch() for outbound HTTP)`,
            },
          ],
        };
      }
      return undefined; // a regular package: normal resolution
    });
  },
};

/** The http shim, whose `incomingHandler` becomes the component's export. */
const HTTP_SHIM = join(SHIMS, SHIMMED.http);

/**
 * Bundles `entry` into one ES module. With `exportHttp`, the bundle's entry
 * is a wrapper that runs the app and re-exports the http shim's
 * `incomingHandler` as the component's wasi:http/incoming-handler.
 * Returns { code, usesHttp } (whether the app imports the http module).
 */
async function bundle(esbuild, entry, outfile, exportHttp) {
  const input = exportHttp
    ? {
        stdin: {
          contents: `import ${JSON.stringify(entry)};\nexport { incomingHandler } from ${JSON.stringify(HTTP_SHIM)};\n`,
          resolveDir: dirname(entry),
          sourcefile: 'shoal-sdk-js-entry.js', // not the app's name: that would import itself
        },
      }
    : { entryPoints: [entry] };
  let result;
  try {
    result = await esbuild.build({
      ...input,
      outfile,
      absWorkingDir: HERE, // output (module names in stack traces) independent of the caller's cwd
      bundle: true,
      write: false,
      metafile: true,
      format: 'esm',
      platform: 'neutral',
      target: 'es2022',
      mainFields: ['module', 'main'],
      conditions: ['module'],
      external: ['wasi:*'],
      inject: [join(SHIMS, 'console.js'), join(SHIMS, 'globals.js')],
      define: { global: 'globalThis', 'process.env.NODE_ENV': '"production"' },
      plugins: [shimPlugin],
      logLevel: 'silent',
      banner: { js: `// Bundled by shoal-sdk-js from ${basename(entry)}` },
    });
  } catch (err) {
    if (Array.isArray(err.errors) && err.errors.length) {
      const msgs = err.errors.map((m) => formatMessage('error', m)).join('\n');
      throw new BuildError(`bundling ${entry} failed:\n${msgs}`);
    }
    throw err;
  }
  if (!exportHttp) for (const w of result.warnings) console.error(formatMessage('warning', w));
  const usesHttp = Object.keys(result.metafile.inputs).some((input) => resolve(HERE, input) === HTTP_SHIM);
  return { code: result.outputFiles[0].text, usesHttp };
}

/**
 * The custom section that tells Shoal a component serves many requests on
 * one instance (so its replicas reuse instances by default): named
 * `shoal:instances`, holding `reuse`. Appended at the component's top level.
 */
function reuseMarker() {
  const name = new TextEncoder().encode('shoal:instances');
  const payload = new TextEncoder().encode('reuse');
  const contents = [...leb128(name.length), ...name, ...payload];
  return Uint8Array.from([0, ...leb128(contents.length), ...contents]);
}

function leb128(n) {
  const out = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n) byte |= 0x80;
    out.push(byte);
  } while (n);
  return out;
}

function step(what, since) {
  console.error(`shoal-sdk-js: ${what} (${((Date.now() - since) / 1000).toFixed(1)}s)`);
}

/**
 * Builds `entry` into a component written to `out`. Returns { bytes, seconds }.
 * Throws BuildError for problems with the input.
 */
export async function buildComponent(entry, out) {
  const started = Date.now();
  entry = resolve(entry);
  out = resolve(out);
  if (!existsSync(entry)) throw new BuildError(`entry file not found: ${entry}`);
  if (!statSync(entry).isFile()) throw new BuildError(`entry is not a file: ${entry}`);

  const { esbuild, componentize } = await loadDeps();
  const work = await mkdtemp(join(tmpdir(), 'shoal-sdk-js-'));
  const keepWork = Boolean(process.env.SHOAL_SDK_JS_KEEP);
  const prevCwd = process.cwd();
  try {
    // Name the bundle after the entry so engine stack traces say e.g. app.js:12:3
    // (line numbers are those of the bundle).
    const bundlePath = join(work, basename(entry, extname(entry)) + '.js');
    let bundled = await bundle(esbuild, entry, bundlePath, false);
    // A Node-style app (it imports http): the shim serves wasi:http itself.
    // Otherwise the app is left as it is (e.g. a fetch-event handler).
    const reuse = bundled.usesHttp;
    if (reuse) bundled = await bundle(esbuild, entry, bundlePath, true);
    await writeFile(bundlePath, bundled.code);
    step(`bundled ${basename(entry)}${reuse ? ' (Node http server: one instance serves many requests)' : ''}`, started);

    // componentize-js maps the source's directory into the engine relative to
    // the cwd; running it from the bundle's directory keeps paths simple
    // (and avoids its path-stripping quirks when cwd is "/").
    process.chdir(work);
    console.error('shoal-sdk-js: componentizing with SpiderMonkey (runs the app\'s top-level code; ~5-30 s)');
    let component;
    try {
      ({ component } = await componentize({
        sourcePath: bundlePath,
        witPath: WIT,
        worldName: WORLD,
      }));
    } catch (err) {
      const msg = String(err && err.message ? err.message : err).trim();
      const hint = keepWork
        ? `(the bundled module is kept at ${bundlePath}; line:col above refer to it)`
        : `(line:col above refer to the bundled module; set SHOAL_SDK_JS_KEEP=1 to keep it for inspection)`;
      throw new BuildError(`componentize-js failed for ${entry}:\n${msg}\n${hint}`);
    } finally {
      process.chdir(prevCwd);
    }

    step('componentized', started);
    if (reuse) component = Buffer.concat([component, reuseMarker()]);

    await mkdir(dirname(out), { recursive: true });
    const tmpOut = `${out}.tmp-${process.pid}`;
    await writeFile(tmpOut, component);
    await rename(tmpOut, out);
    return { bytes: component.byteLength, seconds: (Date.now() - started) / 1000, reuse };
  } finally {
    process.chdir(prevCwd);
    if (keepWork) console.error(`shoal-sdk-js: work directory kept at ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
}

async function main(argv) {
  if (argv.includes('-h') || argv.includes('--help')) {
    console.error('usage: node build.mjs <entry.js> <out.wasm>');
    return 0;
  }
  if (argv.length !== 2) {
    console.error('usage: node build.mjs <entry.js> <out.wasm>');
    return 2;
  }
  const [entry, out] = argv;
  try {
    const { bytes, seconds } = await buildComponent(entry, out);
    console.error(`built ${out} (${(bytes / 1e6).toFixed(1)} MB) from ${entry} in ${seconds.toFixed(1)}s`);
    return 0;
  } catch (err) {
    if (err instanceof BuildError) console.error(`error: ${err.message}`);
    else console.error('error: unexpected failure:', err);
    return 1;
  }
}

function isMain() {
  if (!process.argv[1]) return false;
  try {
    return pathToFileURL(realpathSync(process.argv[1])).href === pathToFileURL(realpathSync(fileURLToPath(import.meta.url))).href;
  } catch {
    return false;
  }
}

if (isMain()) {
  process.exitCode = await main(process.argv.slice(2));
}
