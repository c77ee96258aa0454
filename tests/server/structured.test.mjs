// Structured output with the official OpenAI client (node --test): every json_schema reply of a
// random-weight model must parse and validate with ajv, 100 out of 100, streamed and not.
// Environment: EDGESHARD_URL (http://127.0.0.1:PORT). Started by tests/test_server_structured.cpp
// against llama-2-tiny-random with --chat-template chatml.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Ajv } from 'ajv';

const base = process.env.EDGESHARD_URL;
if (!base) throw new Error('set EDGESHARD_URL');
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', maxRetries: 0, timeout: 120000 });
const model = (await client.models.list()).data[0].id;

// What OpenAI's strict mode takes: every property required, no others; bounded strings and
// arrays, so a model writing at random still ends.
const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'age', 'mood', 'tags', 'pet', 'score'],
  properties: {
    name: { type: 'string', maxLength: 12 },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    mood: { enum: ['happy', 'sad', 'calm'] },
    tags: { type: 'array', items: { type: 'string', maxLength: 6 }, maxItems: 3 },
    pet: {
      anyOf: [
        { type: 'null' },
        {
          type: 'object',
          additionalProperties: false,
          required: ['kind', 'legs'],
          properties: { kind: { $ref: '#/$defs/kind' }, legs: { type: 'integer', minimum: 0, maximum: 8 } },
        },
      ],
    },
    score: { type: 'number' },
  },
  $defs: { kind: { type: 'string', enum: ['cat', 'dog', 'fish'] } },
};
const validate = new Ajv({ strict: true }).compile(schema);
const responseFormat = { type: 'json_schema', json_schema: { name: 'person', strict: true, schema } };
const messages = [{ role: 'user', content: 'Describe a person as JSON.' }];

async function one(i, stream) {
  const params = { model, messages, response_format: responseFormat, max_tokens: 400, seed: i };
  if (!stream) {
    const r = await client.chat.completions.create(params);
    return { text: r.choices[0].message.content, finish: r.choices[0].finish_reason };
  }
  let text = '';
  let finish = null;
  for await (const chunk of await client.chat.completions.create({ ...params, stream: true })) {
    for (const c of chunk.choices) {
      if (c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  return { text, finish };
}

// 100 requests, 8 at a time (the server has 4 slots and a queue).
async function hundred(stream) {
  let valid = 0;
  const failures = [];
  for (let start = 0; start < 100; start += 8) {
    const batch = [];
    for (let i = start; i < Math.min(start + 8, 100); i++) batch.push(one(i, stream));
    for (const { text, finish } of await Promise.all(batch)) {
      let doc;
      try {
        doc = JSON.parse(text);
      } catch {
        failures.push(`not JSON (${finish}): ${text}`);
        continue;
      }
      if (finish === 'stop' && validate(doc)) valid++;
      else failures.push(`${finish}: ${text} ${JSON.stringify(validate.errors)}`);
    }
  }
  assert.equal(valid, 100, failures.slice(0, 5).join('\n'));
}

test('json_schema: 100 of 100 replies validate', () => hundred(false));
test('json_schema streamed: 100 of 100 replies validate', () => hundred(true));

test('grammar and json_schema fields on completions', async () => {
  const r = await client.completions.create({
    model, prompt: 'Pick:', max_tokens: 10, grammar: 'root ::= "left" | "right"',
  });
  assert.ok(['left', 'right'].includes(r.choices[0].text), r.choices[0].text);
  assert.equal(r.choices[0].finish_reason, 'stop');
  const s = { type: 'array', items: { type: 'integer', minimum: 1, maximum: 5 }, minItems: 1, maxItems: 4 };
  const v = new Ajv().compile(s);
  const c = await client.completions.create({ model, prompt: '[', max_tokens: 60, json_schema: s, seed: 7 });
  assert.ok(v(JSON.parse(c.choices[0].text)), c.choices[0].text);
});

test('json_object gives an object', async () => {
  const r = await client.chat.completions.create({
    model, messages, max_tokens: 48, seed: 1, response_format: { type: 'json_object' },
  });
  const text = r.choices[0].message.content;
  assert.equal(text[0], '{', text);
  if (r.choices[0].finish_reason === 'stop') assert.equal(typeof JSON.parse(text), 'object');
});

test('a bad schema is a 400 naming the field', async () => {
  await assert.rejects(
    client.chat.completions.create({
      model, messages, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', format: 'email' } } },
    }),
    (e) => e.status === 400 && /email/.test(e.message) && e.param === 'response_format.json_schema.schema',
  );
  await assert.rejects(
    client.completions.create({ model, prompt: 'x', grammar: 'root ::= "a' }),
    (e) => e.status === 400 && /line 1, column/.test(e.message),
  );
});
