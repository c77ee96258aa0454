#!/usr/bin/env node
// Serving benchmark: aggregate generation tokens/s of `edgeshard serve` at several numbers of
// concurrent streams, optionally beside llama-server on the same model in the same run, and a
// long load run (16 clients streaming for a minute: errors, completeness, RSS before/after).
//
//   node bench/bench_server.mjs [--model PATH] [--edgeshard BIN] [--threads 2] [--parallel 8]
//        [--concurrency 1,4,8] [--tokens 128] [--reps 3] [--load-seconds 60] [--load-clients 16]
//   LLAMA_SERVER=/path/to/llama-server node bench/bench_server.mjs ...   (adds the comparison)
//
// Every stream asks for exactly --tokens tokens (ignore_eos) from a short prompt; the figure is
// streams x tokens / wall time from the first request to the last [DONE], best of --reps.
// Loopback only. llama.cpp is never built or shipped by this repo: bring your own binary.
import { spawn } from 'node:child_process';
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const argv = process.argv.slice(2);
const opt = (name, def) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : def;
};
const model = opt('model', join(root, '../shared/models/synth-llama-spm-256.q8_0.gguf'));
const edgeshard = opt('edgeshard', [join(root, 'build/release/edgeshard'), join(root, 'build/edgeshard')].find(existsSync));
const threads = Number(opt('threads', 2));
const parallel = Number(opt('parallel', 8));
const concurrency = opt('concurrency', '1,4,8').split(',').map(Number);
const tokens = Number(opt('tokens', 128));
const reps = Number(opt('reps', 3));
const loadSeconds = Number(opt('load-seconds', 60));
const loadClients = Number(opt('load-clients', 16));
const llamaServer = process.env.LLAMA_SERVER;
const ctx = 1024;

function rssKiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) : null;
}

async function start(name, cmd, args, port) {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    if (proc.exitCode !== null) throw new Error(`${name} exited:\n${err}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) return { name, proc, url };
    } catch {}
    await sleep(100);
  }
  proc.kill('SIGTERM');
  throw new Error(`${name} did not become healthy:\n${err}`);
}

async function stop(s) {
  s.proc.kill('SIGTERM');
  for (let i = 0; i < 100 && s.proc.exitCode === null; i++) await sleep(100);
  if (s.proc.exitCode === null) s.proc.kill('SIGKILL');
}

// One streamed completion of exactly `tokens` tokens; returns the content chunks seen.
async function stream(url, prompt, seed) {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: tokens, ignore_eos: true, temperature: 0.8, seed, stream: true }),
  });
  if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  const dec = new TextDecoder();
  let buf = '';
  let chunks = 0;
  let done = false;
  for await (const part of r.body) {
    buf += dec.decode(part, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith('data: ')) continue;
      if (ev === 'data: [DONE]') { done = true; continue; }
      const j = JSON.parse(ev.slice(6));
      if (j.choices?.[0]?.text) chunks++;
    }
  }
  if (!done) throw new Error('stream ended without [DONE]');
  return chunks;
}

async function measure(url, n) {
  let best = 0;
  for (let rep = 0; rep < reps; rep++) {
    const t0 = performance.now();
    await Promise.all(Array.from({ length: n }, (_, i) => stream(url, `Once upon a time, story ${i}:`, 1000 * rep + i)));
    const secs = (performance.now() - t0) / 1000;
    best = Math.max(best, (n * tokens) / secs);
  }
  return best;
}

async function stepMetrics(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const get = (k) => Number(text.match(new RegExp(`^${k} (\\S+)$`, 'm'))[1]);
  return { steps: get('edgeshard_batch_steps_total'), rows: get('edgeshard_batch_rows_total'), seconds: get('edgeshard_batch_seconds_total') };
}

async function loadRun(url, pid) {
  const stats = { requests: 0, completed: 0, errors: 0, tokens: 0 };
  const t0 = Date.now();
  const deadline = t0 + loadSeconds * 1000;
  let rssWarm = null;
  const warm = sleep(Math.min(5000, loadSeconds * 200)).then(() => { rssWarm = rssKiB(pid); });
  await Promise.all([warm, ...Array.from({ length: loadClients }, async (_, c) => {
    for (let k = 0; Date.now() < deadline; k++) {
      stats.requests++;
      try {
        await stream(url, `Client ${c} asks for story ${k}:`, c * 100000 + k);
        stats.completed++;
        stats.tokens += tokens;
      } catch (e) {
        stats.errors++;
      }
    }
  })]);
  return { ...stats, seconds: (Date.now() - t0) / 1000, rss_kib_after_warmup: rssWarm, rss_kib_end: rssKiB(pid) };
}

const results = {};
const servers = [['edgeshard', edgeshard, ['serve', '-m', model, '--port', '18431', '--host', '127.0.0.1', '-t', String(threads),
  '--parallel', String(parallel), '-c', String(ctx)], 18431]];
if (llamaServer) {
  servers.push(['llama-server', llamaServer, ['-m', model, '--port', '18432', '--host', '127.0.0.1', '-t', String(threads),
    '-np', String(parallel), '-c', String(ctx * parallel), '--log-disable'], 18432]);
}
for (const [name, bin, args, port] of servers) {
  const s = await start(name, bin, args, port);
  try {
    await measure(s.url, 1);  // warm-up
    results[name] = {};
    for (const n of concurrency) {
      const m0 = name === 'edgeshard' ? await stepMetrics(s.url) : null;
      results[name][n] = await measure(s.url, n);
      let note = '';
      if (m0) {
        // The engine's own view: forward steps, rows per step and time per step.
        const m1 = await stepMetrics(s.url);
        const steps = m1.steps - m0.steps;
        note = ` (${(m1.rows - m0.rows) / steps} rows/step, ${((1000 * (m1.seconds - m0.seconds)) / steps).toFixed(2)} ms/step)`;
        results[`${name} ms/step`] = { ...results[`${name} ms/step`], [n]: (1000 * (m1.seconds - m0.seconds)) / steps };
      }
      console.error(`${name}: ${n} streams: ${results[name][n].toFixed(1)} tokens/s${note}`);
    }
    if (name === 'edgeshard' && loadSeconds > 0) {
      results.load = await loadRun(s.url, s.proc.pid);
      console.error(`load: ${JSON.stringify(results.load)}`);
    }
  } finally {
    await stop(s);
  }
}

const engines = Object.keys(results).filter((k) => k !== 'load');
const lines = [`model: ${model}`, `threads: ${threads}, slots: ${parallel}, ${tokens} tokens per stream, best of ${reps}`, '',
  `| streams | ${engines.join(' | ')} |`, `|---|${engines.map(() => '---').join('|')}|`];
for (const n of concurrency) lines.push(`| ${n} | ${engines.map((k) => results[k][n].toFixed(1)).join(' | ')} |`);
const es = results.edgeshard;
const scale = es[Math.max(...concurrency)] / es[Math.min(...concurrency)];
lines.push('', `edgeshard: ${Math.max(...concurrency)} streams give ${scale.toFixed(2)}x the aggregate tokens/s of ${Math.min(...concurrency)}`);
console.log(lines.join('\n'));
console.log(JSON.stringify(results));
if (results.load && (results.load.errors > 0 || results.load.completed !== results.load.requests)) process.exit(1);
