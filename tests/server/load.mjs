// Load test: N clients keep streaming chat completions from a running `edgeshard serve` for a
// while; every stream must end with a finish reason and [DONE], and no request may fail.
// Prints one JSON summary line. Loopback only; bounded by --seconds and --clients.
//   node load.mjs --url http://127.0.0.1:PORT [--key KEY] [--clients 16] [--seconds 60]
//                 [--max-tokens 64] [--pid SERVER_PID] [--warmup 2]
// With --pid, the server's resident memory is read from /proc after the warm-up and at the end.
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const url = args.url ?? process.env.EDGESHARD_URL;
if (!url || !/^http:\/\/(127\.0\.0\.1|localhost|\[::1\])(:\d+)?$/.test(url)) {
  console.error('--url must be a loopback http://127.0.0.1:PORT address');
  process.exit(2);
}
const key = args.key ?? process.env.EDGESHARD_API_KEY ?? 'none';
const clients = Math.min(Number(args.clients ?? 16), 256);
const seconds = Math.min(Number(args.seconds ?? 60), 3600);
const warmup = Number(args.warmup ?? 2);
const maxTokens = Number(args['max-tokens'] ?? 64);
const pid = args.pid;

const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0, timeout: 120000 });
const model = (await client.models.list()).data[0].id;

function rssKiB() {
  if (!pid) return null;
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) : null;
}

const words = ['cat', 'dog', 'park', 'ball', 'tree', 'sun', 'boat', 'cake', 'bird', 'hat'];
const stats = { requests: 0, completed: 0, incomplete: 0, errors: 0, tokens: 0, error_messages: [] };
const start = Date.now();
const deadline = start + seconds * 1000;
let rssBefore = null;
const warm = new Promise((r) => setTimeout(() => { rssBefore = rssKiB(); r(); }, warmup * 1000));

async function worker(id) {
  let turn = 0;
  while (Date.now() < deadline) {
    stats.requests++;
    const w = words[(id + turn++) % words.length];
    try {
      const stream = await client.chat.completions.create({
        model, stream: true, max_tokens: maxTokens, temperature: 0.8, seed: id * 1000 + turn,
        messages: [{ role: 'user', content: `Tell me a story about a ${w} and client ${id}.` }],
        stream_options: { include_usage: true },
      });
      let finish = null;
      let usage = null;
      for await (const chunk of stream) {
        for (const c of chunk.choices) if (c.finish_reason) finish = c.finish_reason;
        if (chunk.usage) usage = chunk.usage;
      }
      // The client's iterator ends cleanly only after "data: [DONE]"; finish and usage must be there too.
      if (finish && usage) {
        stats.completed++;
        stats.tokens += usage.completion_tokens;
      } else {
        stats.incomplete++;
      }
    } catch (e) {
      stats.errors++;
      if (stats.error_messages.length < 5) stats.error_messages.push(String(e.message ?? e));
    }
  }
}

await Promise.all([warm, ...Array.from({ length: clients }, (_, i) => worker(i))]);
const elapsed = (Date.now() - start) / 1000;
const out = {
  clients, seconds: elapsed, ...stats, tokens_per_second: stats.tokens / elapsed,
  rss_kib_after_warmup: rssBefore, rss_kib_end: rssKiB(),
};
console.log(JSON.stringify(out));
process.exit(stats.errors === 0 && stats.incomplete === 0 && stats.completed > 0 ? 0 : 1);
