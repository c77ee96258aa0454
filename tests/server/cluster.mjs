// Drives `edgeshard serve --cluster` with the official OpenAI client (run by
// tests/test_server_cluster.cpp): 8 concurrent streaming chat requests, greedy, against the
// cluster, and the same requests against a one-device server; every stream must be identical.
// With --kill-pid, that process (a worker) gets SIGKILL (or --kill-signal SIGSTOP) once
// --kill-after chunks of the cluster's streams have arrived: the streams must survive the replan. Prints a JSON summary; exits 1 on any difference.
import OpenAI from 'openai';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const key = args.key;
const n = Number(args.streams || 8);
const maxTokens = Number(args['max-tokens'] || 48);
const client = (url) => new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0, timeout: 120000 });

const topics = ['a cat', 'the sea', 'a red ball', 'two friends', 'a big tree', 'the moon', 'a dog named Max', 'rain'];
const requests = Array.from({ length: n }, (_, i) => ({
  messages: [{ role: 'system', content: 'You tell short stories.' }, { role: 'user', content: `Tell me about ${topics[i % topics.length]}.` }],
  max_tokens: maxTokens,
  temperature: 0,
}));

let chunks = 0;
let killed = false;
let armed = false;  // the kill applies to the cluster's streams only
async function stream(c, model, r) {
  const s = await c.chat.completions.create({ model, stream: true, stream_options: { include_usage: true }, ...r });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of s) {
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      if (ch.delta.content) text += ch.delta.content;
      if (ch.finish_reason) finish = ch.finish_reason;
    }
    if (armed && ++chunks >= Number(args['kill-after'] || 0) && args['kill-pid'] && !killed) {
      killed = true;
      process.kill(Number(args['kill-pid']), args['kill-signal'] || 'SIGKILL');
    }
  }
  return { text, finish, completion_tokens: usage ? usage.completion_tokens : -1 };
}

const one = client(args.single);
const oneModel = (await one.models.list()).data[0].id;
const alone = await Promise.all(requests.map((r) => stream(one, oneModel, r)));
const cl = client(args.cluster);
const clModel = (await cl.models.list()).data[0].id;
const t0 = Date.now();
armed = true;
const together = await Promise.all(requests.map((r) => stream(cl, clModel, r)));
const seconds = (Date.now() - t0) / 1000;
const mismatches = [];
together.forEach((t, i) => {
  if (t.text !== alone[i].text || t.finish !== alone[i].finish) mismatches.push({ i, cluster: t, single: alone[i] });
});
const tokens = together.reduce((a, t) => a + t.completion_tokens, 0);
console.log(JSON.stringify({ streams: n, identical: mismatches.length === 0, mismatches, killed, tokens, seconds, single: alone.map((a) => a.text) }));
process.exit(mismatches.length === 0 ? 0 : 1);
