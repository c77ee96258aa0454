// Drives a running `edgeshard serve` with the official OpenAI client (node --test).
// Environment: EDGESHARD_URL (http://127.0.0.1:PORT), EDGESHARD_API_KEY.
// Started by tests/test_server.cpp against stories260K with --chat-template chatml.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const base = process.env.EDGESHARD_URL;
const key = process.env.EDGESHARD_API_KEY;
if (!base || !key) throw new Error('set EDGESHARD_URL and EDGESHARD_API_KEY');
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0, timeout: 60000 });
const models = await client.models.list();
const model = models.data[0].id;
const nCtx = models.data[0].meta.n_ctx;

async function metrics() {
  const r = await fetch(`${base}/metrics`, { headers: { Authorization: `Bearer ${key}` } });
  const out = {};
  for (const line of (await r.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

async function chatStream(params) {
  const stream = await client.chat.completions.create({ model, stream: true, ...params });
  let text = '';
  let finish = null;
  let usage = null;
  let role = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  return { text, finish, usage, role };
}

test('models lists the served model', () => {
  assert.equal(models.data.length, 1);
  assert.equal(model, 'stories260K');
  assert.equal(models.data[0].object, 'model');
});

test('chat completion: text, finish reason and usage', async () => {
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Tell me a story.' }], max_tokens: 12, temperature: 0,
  });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(r.choices[0].message.content.length > 0);
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.prompt_tokens > 5);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 12);
  if (r.choices[0].finish_reason === 'length') assert.equal(r.usage.completion_tokens, 12);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('chat stream matches the non-streamed reply, with usage', async () => {
  const params = { messages: [{ role: 'system', content: 'You tell stories.' }, { role: 'user', content: 'Once upon a time' }], max_tokens: 24, temperature: 0 };
  const whole = await client.chat.completions.create({ model, ...params });
  const s = await chatStream({ ...params, stream_options: { include_usage: true } });
  assert.equal(s.role, 'assistant');
  assert.equal(s.text, whole.choices[0].message.content);
  assert.equal(s.finish, whole.choices[0].finish_reason);
  assert.equal(s.usage.completion_tokens, whole.usage.completion_tokens);
  assert.equal(s.usage.prompt_tokens, whole.usage.prompt_tokens);
});

test('completions: stream equals non-stream, logprobs are consistent', async () => {
  const params = { model, prompt: 'Once upon a time', max_tokens: 20, temperature: 0, logprobs: 3 };
  const r = await client.completions.create(params);
  assert.equal(r.object, 'text_completion');
  const c = r.choices[0];
  assert.equal(c.finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 20);
  const lp = c.logprobs;
  assert.equal(lp.tokens.length, 20);
  assert.equal(lp.token_logprobs.length, 20);
  assert.equal(lp.top_logprobs.length, 20);
  assert.equal(lp.tokens.join(''), c.text);
  for (let i = 0; i < 20; i++) {
    assert.ok(lp.token_logprobs[i] <= 0);
    const top = Object.entries(lp.top_logprobs[i]);
    assert.ok(top.length >= 1 && top.length <= 3);
    // Greedy picks the most likely token: its logprob is the best of the top list.
    const best = Math.max(...top.map(([, v]) => v));
    assert.ok(Math.abs(best - lp.token_logprobs[i]) < 1e-6, `token ${i}`);
    if (i > 0) assert.equal(lp.text_offset[i], lp.text_offset[i - 1] + lp.tokens[i - 1].length);
  }
  const stream = await client.completions.create({ ...params, stream: true });
  let text = '';
  let finish = null;
  const toks = [];
  for await (const chunk of stream) {
    for (const ch of chunk.choices) {
      text += ch.text;
      if (ch.logprobs) toks.push(...ch.logprobs.tokens);
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  assert.equal(text, c.text);
  assert.equal(finish, 'length');
  assert.deepEqual(toks, lp.tokens);
});

test('stop strings end the reply before them', async () => {
  const full = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0 });
  const text = full.choices[0].text;
  // A word from the middle of the greedy continuation.
  const words = text.split(' ').filter((w) => w.length >= 3);
  assert.ok(words.length >= 3, text);
  const stop = ' ' + words[2];
  const cut = text.slice(0, text.indexOf(stop));
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, stop: [stop, '@@@'] });
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.choices[0].text, cut);
  const s = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, stop, stream: true });
  let streamed = '';
  for await (const chunk of s) streamed += chunk.choices.map((c) => c.text).join('');
  assert.equal(streamed, cut);
});

test('a seed makes sampling repeatable; penalties are accepted', async () => {
  const params = { model, prompt: 'The dog', max_tokens: 24, temperature: 1, seed: 1234, presence_penalty: 0.5, frequency_penalty: 0.5, top_p: 0.9 };
  const a = await client.completions.create(params);
  const b = await client.completions.create(params);
  assert.equal(a.choices[0].text, b.choices[0].text);
  const others = await Promise.all([1, 2, 3].map((seed) => client.completions.create({ ...params, seed })));
  assert.ok(others.some((o) => o.choices[0].text !== a.choices[0].text), 'different seeds should not all agree');
});

test('concurrent streams give the same greedy text as one at a time', async () => {
  const prompts = ['Lily went to', 'The cat', 'Tom and Sue', 'One day, a big', 'The sun was', 'Ben had a red', 'In the park', 'Mom said'];
  const alone = [];
  for (const p of prompts) {
    const r = await client.completions.create({ model, prompt: p, max_tokens: 32, temperature: 0 });
    alone.push(r.choices[0].text);
  }
  const together = await Promise.all(prompts.map(async (p) => {
    const s = await client.completions.create({ model, prompt: p, max_tokens: 32, temperature: 0, stream: true });
    let t = '';
    for await (const chunk of s) t += chunk.choices.map((c) => c.text).join('');
    return t;
  }));
  assert.deepEqual(together, alone);
});

test('the next chat turn reuses the cached prefix', async () => {
  const messages = [{ role: 'system', content: 'You are a kind storyteller who likes cats and dogs.' }, { role: 'user', content: 'Tell me about a cat named Tom.' }];
  const first = await client.chat.completions.create({ model, messages, max_tokens: 16, temperature: 0 });
  messages.push(first.choices[0].message, { role: 'user', content: 'What did Tom do next?' });
  const second = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
  const cached = second.usage.prompt_tokens_details.cached_tokens;
  assert.ok(cached >= first.usage.prompt_tokens - 1, `cached ${cached} of the first prompt's ${first.usage.prompt_tokens}`);
  assert.ok(cached < second.usage.prompt_tokens);
});

// logit_bias as the client sends it: token ids as keys. After "Once upon a time" greedy decoding
// picks token 432 (models/ref); /detokenize (llama-server's endpoint) gives token texts.
test('logit_bias bans and forces tokens', async () => {
  const post = async (path, body) => (await fetch(`${base}${path}`, {
    method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  })).json();
  const prompt = 'Once upon a time';
  const plain = await client.completions.create({ model, prompt, max_tokens: 1, temperature: 0 });
  assert.equal(plain.choices[0].text, (await post('/detokenize', { tokens: [432] })).content);
  const banned = await client.completions.create(
    { model, prompt, max_tokens: 1, temperature: 0, logit_bias: { 432: -100 } });
  assert.notEqual(banned.choices[0].text, plain.choices[0].text);
  const forced = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, logit_bias: { 300: 100 },
  });
  assert.equal(forced.choices[0].message.content, (await post('/detokenize', { tokens: [300, 300, 300, 300] })).content);
  await assert.rejects(client.completions.create({ model, prompt, logit_bias: { 999999: 5 } }),
    (e) => e.status === 400 && e.param === 'logit_bias');
  await assert.rejects(client.completions.create({ model, prompt, best_of: 3 }),
    (e) => e.status === 400 && e.param === 'best_of');
});

test('errors come back as OpenAI errors', async () => {
  await assert.rejects(client.chat.completions.create({ model, messages: [] }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError);
    assert.equal(e.status, 400);
    assert.equal(e.param, 'messages');
    return true;
  });
  await assert.rejects(client.completions.create({ model, prompt: 'x', max_tokens: 100000000 }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.param, 'max_tokens');
    return true;
  });
  await assert.rejects(client.completions.create({ model, prompt: 'x', n: 2 }), (e) => e.status === 400 && e.param === 'n');
  const long = 'once upon a time '.repeat(800);
  await assert.rejects(client.completions.create({ model, prompt: long }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.code, 'context_length_exceeded');
    return true;
  });
  const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'wrong-key', maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError);
    assert.equal(e.status, 401);
    return true;
  });
});

test('aborting a stream cancels its generation and frees the slot', async () => {
  const before = await metrics();
  const controller = new AbortController();
  const stream = await client.completions.create(
    { model, prompt: 'Once upon a time', max_tokens: nCtx - 16, temperature: 1, ignore_eos: true, stream: true },
    { signal: controller.signal });
  let chunks = 0;
  try {
    for await (const chunk of stream) {
      if (chunk.choices.length && ++chunks === 3) {
        controller.abort();
        break;
      }
    }
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError', String(e));
  }
  assert.equal(chunks, 3);
  let m;
  for (let i = 0; i < 300; i++) {
    m = await metrics();
    if (m['edgeshard_requests_total{reason="cancelled"}'] > before['edgeshard_requests_total{reason="cancelled"}'] &&
        m.edgeshard_slots_active === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(m['edgeshard_requests_total{reason="cancelled"}'], before['edgeshard_requests_total{reason="cancelled"}'] + 1);
  assert.equal(m.edgeshard_slots_active, 0);
  // The generation stopped before its end.
  assert.ok(m.edgeshard_generated_tokens_total - before.edgeshard_generated_tokens_total < nCtx - 16);
});

// chatml (this server's template) has no tool-call syntax: tools are refused, not dropped.
test('tools on a template that cannot show them are 400', async () => {
  const tools = [{ type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } }];
  const messages = [{ role: 'user', content: 'Time?' }];
  await assert.rejects(client.chat.completions.create({ model, messages, tools }),
    (e) => e.status === 400 && e.param === 'tools' && /tool-call syntax/.test(e.message));
  const none = await client.chat.completions.create({ model, messages, tools, tool_choice: 'none', max_tokens: 2 });
  assert.equal(none.choices[0].message.role, 'assistant');
});
