#!/usr/bin/env node
// Aggregate generation tokens/s of an OpenAI-compatible server (edgeshard serve --cluster, or
// llama-server) at several numbers of concurrent streams. Every stream asks for exactly --tokens
// tokens (ignore_eos) from its own short prompt; the figure is streams x tokens / wall time from
// the first request to the last stream's end, the median of --reps. Prints one JSON object.
//
//   node bench/cluster/serve_load.mjs --url http://127.0.0.1:8090 [--streams 1,4,8]
//        [--tokens 32] [--reps 3] [--label NAME]
const argv = process.argv.slice(2);
const opt = (name, def) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : def;
};
const url = opt('url');
if (!url) throw new Error('--url is required');
const streams = opt('streams', '1,4,8').split(',').map(Number);
const tokens = Number(opt('tokens', 32));
const reps = Number(opt('reps', 3));
const words = ['cat', 'sea', 'ball', 'friend', 'tree', 'moon', 'dog', 'rain', 'sun', 'boat', 'bird', 'hill'];

async function one(i) {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      prompt: `Once upon a time there was a ${words[i % words.length]} that`,
      max_tokens: tokens, n_predict: tokens, ignore_eos: true, temperature: 0, stream: true,
      // llama-server would otherwise reuse the slot's cache across reps; edgeshard does too.
      cache_prompt: true,
    }),
  });
  if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  const text = await r.text();
  let n = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith('data: ') || line.startsWith('data: [DONE]')) continue;
    const j = JSON.parse(line.slice(6));
    if (j.error) throw new Error(JSON.stringify(j.error));
    for (const c of j.choices || []) if (c.text) n += 1;
  }
  return n;
}

const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const out = { label: opt('label', url), tokens, reps, results: [] };
await one(0);  // warm-up: loads, first-touch of pages
for (const n of streams) {
  const tps = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await Promise.all(Array.from({ length: n }, (_, i) => one(i + r * n)));
    tps.push((n * tokens) / ((performance.now() - t0) / 1000));
  }
  out.results.push({ streams: n, tokens_per_s: median(tps), all: tps });
}
console.log(JSON.stringify(out));
