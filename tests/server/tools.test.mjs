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
      properties: {
        city: { type: 'string', maxLength: 12 },
        unit: { type: 'string', enum: ['C', 'F'] },
        days: { type: 'integer', minimum: 1, maximum: 7 },
      },
      required: ['city', 'unit'],
      additionalProperties: false,
    },
  },
};
const time = {
  type: 'function',
  function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { enum: ['UTC', 'CET', 'PST'] } }, required: ['zone'] } },
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
  // A forced call and a grammar of the request's own would contradict each other.
  await assert.rejects(client.chat.completions.create({ model, messages, tools, tool_choice: 'required', grammar: 'root ::= "x"' }),
    (e) => e.status === 400 && e.param === 'tool_choice');
});

// Qwen3's template without thinking: the reply is the call alone.
const noThink = { chat_template_kwargs: { enable_thinking: false } };

test('tool_choice required: every reply is valid calls, whole and streamed', async () => {
  for (let seed = 1; seed <= 12; seed++) {
    const params = { model, messages, tools, tool_choice: 'required', max_tokens: 400, temperature: 1, seed, ...noThink };
    const r = await client.chat.completions.create(params);
    const m = r.choices[0].message;
    assert.equal(r.choices[0].finish_reason, 'tool_calls', JSON.stringify(m));
    assert.ok(m.tool_calls.length >= 1);
    assert.equal(m.content, null);
    checkCalls(m);
    if (seed > 4) continue;
    // The same seed streamed: the client's helper assembles the same calls.
    const done = await client.chat.completions.stream(params).finalChatCompletion();
    assert.equal(done.choices[0].finish_reason, 'tool_calls');
    checkCalls(done.choices[0].message);
    assert.deepEqual(done.choices[0].message.tool_calls.map((c) => c.function), m.tool_calls.map((c) => c.function));
  }
});

test('a named tool_choice calls that tool; parallel_tool_calls false gives one call', async () => {
  for (let seed = 1; seed <= 6; seed++) {
    const r = await client.chat.completions.create({
      model, messages, tools, tool_choice: { type: 'function', function: { name: 'get_time' } },
      parallel_tool_calls: false, max_tokens: 200, temperature: 1, seed, stream: seed % 2 === 0, ...noThink,
    });
    let message;
    if (seed % 2 === 0) {
      // Raw chunks: the first of a call has index, id, type and name; later ones only arguments.
      const calls = [];
      for await (const chunk of r) {
        for (const tc of chunk.choices[0]?.delta?.tool_calls ?? []) {
          if (tc.id) {
            assert.equal(tc.type, 'function');
            assert.equal(tc.function.arguments, '');
            calls[tc.index] = { id: tc.id, type: tc.type, function: { name: tc.function.name, arguments: '' } };
          } else {
            assert.equal(tc.id, undefined);
            calls[tc.index].function.arguments += tc.function.arguments;
          }
        }
      }
      message = { tool_calls: calls };
    } else {
      message = r.choices[0].message;
    }
    assert.equal(message.tool_calls.length, 1);
    assert.equal(message.tool_calls[0].function.name, 'get_time');
    checkCalls(message);
  }
});

// A grammar of the request's own makes the random model write the markers: the reply is read
// into tool_calls and reasoning_content under tool_choice auto.
test('auto: text with call markers becomes tool_calls, <think> becomes reasoning_content', async () => {
  const call = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>';
  // JSON string literals are GBNF literals too (the same \n and \" escapes).
  const grammar = `root ::= ${JSON.stringify('<think>\nNeed the time.\n</think>\n\n')} ${JSON.stringify(call)}`;
  const params = { model, messages, tools, grammar, max_tokens: 200, temperature: 0 };
  const r = await client.chat.completions.create(params);
  const m = r.choices[0].message;
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.equal(m.reasoning_content, 'Need the time.');
  assert.equal(m.content, null);
  assert.equal(m.tool_calls.length, 1);
  assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), { zone: 'CET' });
  checkCalls(m);
  const stream = await client.chat.completions.create({ ...params, stream: true });
  let reasoning = '';
  let content = '';
  const names = [];
  for await (const chunk of stream) {
    const d = chunk.choices[0]?.delta ?? {};
    reasoning += d.reasoning_content ?? '';
    content += d.content ?? '';
    for (const tc of d.tool_calls ?? []) if (tc.function?.name) names.push(tc.function.name);
  }
  assert.equal(reasoning.trim(), 'Need the time.');
  assert.equal(content.trim(), '');
  assert.deepEqual(names, ['get_time']);
  // reasoning_format none: the same text stays content.
  const raw = await client.chat.completions.create({ ...params, tools: undefined, reasoning_format: 'none' });
  assert.ok(raw.choices[0].message.content.startsWith('<think>'), raw.choices[0].message.content);
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
