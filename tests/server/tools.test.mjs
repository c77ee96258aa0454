// Tool calls with the official OpenAI client (node --test) against a running `edgeshard serve`.
// Environment: EDGESHARD_URL, EDGESHARD_API_KEY. Started by tests/test_server.cpp with the
// random-weight llama-2-tiny-random and Qwen3's chat template (Hermes <tool_call>, <think>).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Ajv from 'ajv';

const base = process.env.EDGESHARD_URL;
const key = process.env.EDGESHARD_API_KEY;
if (!base || !key) throw new Error('set EDGESHARD_URL and EDGESHARD_API_KEY');
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0, timeout: 60000 });
const model = (await client.models.list()).data[0].id;
const ajv = new Ajv({ strict: true });

const weather = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['C', 'F'] } },
      required: ['city'],
      additionalProperties: false,
    },
  },
};
const time = {
  type: 'function',
  function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { type: 'string' } }, required: ['zone'] } },
};
const tools = [weather, time];
const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];

async function post(path, body) {
  const r = await fetch(`${base}${path}`, {
    method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

// A reply's calls are OpenAI-shaped and their arguments fit the tool's schema.
function checkCalls(message) {
  for (const call of message.tool_calls ?? []) {
    assert.equal(call.type, 'function');
    assert.match(call.id, /^call_[A-Za-z0-9]{24}$/);
    const tool = tools.find((t) => t.function.name === call.function.name);
    assert.ok(tool, `a call of an unknown tool: ${call.function.name}`);
    const validate = ajv.compile(tool.function.parameters);
    assert.ok(validate(JSON.parse(call.function.arguments)), ajv.errorsText(validate.errors));
  }
}

test('auto: the reply is content or valid calls, stream assembled by the client equals it', async () => {
  const params = { model, messages, tools, tool_choice: 'auto', max_tokens: 24, temperature: 0 };
  const whole = await client.chat.completions.create(params);
  const m = whole.choices[0].message;
  assert.equal(m.role, 'assistant');
  checkCalls(m);
  const finish = whole.choices[0].finish_reason;
  assert.ok(['stop', 'length', 'tool_calls'].includes(finish), finish);
  assert.equal(finish === 'tool_calls', (m.tool_calls ?? []).length > 0);
  // The client's stream helper assembles the chunks into the same message.
  const stream = client.chat.completions.stream(params);
  const done = await stream.finalChatCompletion();
  assert.equal(done.choices[0].finish_reason, finish);
  assert.equal(done.choices[0].message.content ?? '', m.content ?? '');
  assert.deepEqual((done.choices[0].message.tool_calls ?? []).map((c) => c.function),
    (m.tool_calls ?? []).map((c) => c.function));
});

test('tool_choice none: the tools are not shown to the model, no calls come back', async () => {
  const auto = await client.chat.completions.create({ model, messages, tools, max_tokens: 4, temperature: 0 });
  const none = await client.chat.completions.create({ model, messages, tools, tool_choice: 'none', max_tokens: 4, temperature: 0 });
  const plain = await client.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0 });
  assert.ok(auto.usage.prompt_tokens > none.usage.prompt_tokens + 20, `${auto.usage.prompt_tokens} vs ${none.usage.prompt_tokens}`);
  assert.equal(none.usage.prompt_tokens, plain.usage.prompt_tokens);
  assert.equal(none.choices[0].message.tool_calls, undefined);
  assert.notEqual(none.choices[0].finish_reason, 'tool_calls');
});

test('the template sees tools, earlier calls and their results', async () => {
  const turn = [
    ...messages,
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
    { role: 'tool', tool_call_id: 'call_1', content: '18 degrees, sunny' },
  ];
  const r = await post('/apply-template', { messages: turn, tools });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.match(r.body.prompt, /<tools>[\s\S]*"get_weather"[\s\S]*<\/tools>/);
  assert.ok(r.body.prompt.includes('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'), r.body.prompt);
  assert.ok(r.body.prompt.includes('<tool_response>\n18 degrees, sunny\n</tool_response>'), r.body.prompt);
  const next = await client.chat.completions.create({ model, messages: turn, tools, max_tokens: 4 });
  assert.equal(next.choices[0].message.role, 'assistant');
});

test('malformed tools and tool_choice are 400 naming the part', async () => {
  const cases = [
    [{ tools: [{ type: 'function' }] }, 'tools[0].function'],
    [{ tools: [{ type: 'web_search' }] }, 'tools[0].type'],
    [{ tools: [{ type: 'function', function: { name: 'bad name' } }] }, 'tools[0].function.name'],
    [{ tools: [{ type: 'function', function: { name: 'f', parameters: [] } }] }, 'tools[0].function.parameters'],
    [{ tools, tool_choice: 'always' }, 'tool_choice'],
    [{ tools, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice'],
    [{ tool_choice: 'required' }, 'tool_choice'],
    [{ tools, parallel_tool_calls: 'yes' }, 'parallel_tool_calls'],
    [{ tools, reasoning_format: 'deepseek-legacy' }, 'reasoning_format'],
  ];
  for (const [extra, param] of cases) {
    await assert.rejects(client.chat.completions.create({ model, messages, max_tokens: 2, ...extra }),
      (e) => e.status === 400 && e.param === param, `${JSON.stringify(extra)} -> ${param}`);
  }
  // Without a grammar engine a forced call could be invalid: refused, not answered.
  for (const tool_choice of ['required', { type: 'function', function: { name: 'get_weather' } }]) {
    await assert.rejects(client.chat.completions.create({ model, messages, tools, tool_choice, max_tokens: 2 }),
      (e) => e.status === 400 && e.param === 'tool_choice' && /grammar/.test(e.message));
  }
});

// A token the greedy reply uses, banned with -100, never appears again: greedy or sampled,
// whole or streamed. Its id comes from /tokenize of the reply (a multi-character SentencePiece
// piece belongs to one token only).
test('logit_bias -100 bans a token, streaming too', async () => {
  const params = { model, messages, max_tokens: 32, temperature: 0, logprobs: true };
  const greedy = await client.chat.completions.create(params);
  const pieces = greedy.choices[0].logprobs.content.map((t) => t.token);
  const toks = (await post('/tokenize', { content: greedy.choices[0].message.content, with_pieces: true })).body.tokens;
  const target = toks.find((t) => typeof t.piece === 'string' && t.piece.trim().length >= 2 && pieces.includes(t.piece));
  assert.ok(target, `no multi-character token of ${JSON.stringify(pieces)} found`);
  const logit_bias = { [target.id]: -100 };
  const banned = await client.chat.completions.create({ ...params, logit_bias });
  const after = banned.choices[0].logprobs.content.map((t) => t.token);
  assert.ok(!after.includes(target.piece), `${target.piece} in ${JSON.stringify(after)}`);
  assert.notDeepEqual(after, pieces);
  for (const seed of [1, 2, 3]) {
    const stream = await client.chat.completions.create({ ...params, temperature: 1.5, seed, logit_bias, stream: true, max_tokens: 48 });
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        for (const t of c.logprobs?.content ?? []) assert.notEqual(t.token, target.piece, `seed ${seed}`);
      }
    }
  }
});
