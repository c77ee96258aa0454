// JSON Schema -> GBNF, for structured output (response_format json_schema, llama-server's
// json_schema field, tool call arguments). The grammar accepts only JSON text the schema
// validates: where the schema allows more than one shape, it allows a subset (no properties
// beyond those named, compact key order), never an invalid document.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/runtime_grammar.h"

namespace es::runtime {

// GBNF rules matching JSON text valid under `schema`. The entry rule is `<rule_prefix>root` and
// every helper rule's name starts with rule_prefix too, so the text can be pasted into a larger
// grammar (e.g. `root ::= "<tool_call>" call-root "</tool_call>"` plus
// JsonSchemaToGbnf(args, "call-")); with prefix "" it is a whole grammar. The prefix may hold
// letters, digits, '-' and '_'.
//
// Covered: type (and type arrays), properties, required, additionalProperties, enum, const,
// anyOf, oneOf, allOf, $ref (#/$defs/..., #/definitions/..., #, recursion), items, prefixItems,
// minItems, maxItems, minLength, maxLength, minimum/maximum/exclusive* on integers, format
// date / time / date-time / uuid, pattern (see PatternToGbnf). Annotations (title,
// description, default, ...) and unknown keywords are ignored. Throws es::Error naming the keyword
// and where it is (a JSON pointer) when the schema is malformed or uses a keyword that constrains
// the output and is not implemented (not, multipleOf, ...).
std::string JsonSchemaToGbnf(const nlohmann::json& schema, const std::string& rule_prefix = "");

// The inside of a JSON string (its JSON text, without the quotes) whose value matches the
// ECMA-262 regular expression `pattern` as a whole, as a GBNF expression. Supported: literals,
// `.`, classes with ranges and negation, \d \w \s \D \W \S, escapes, groups ((?:...) and
// named ones too), `|`, `*` `+` `?` `{m,n}` (lazy or not), `^` and `$` at the ends (JSON
// Schema's patterns match anywhere; a whole match is one of those). Characters JSON must escape
// are written escaped; classes that would take any of them by negation leave them out. Throws
// es::Error naming the construct for lookaround, backreferences, \b and \p{...}.
std::string PatternToGbnf(const std::string& pattern);

// GBNF for any JSON object (response_format {"type": "json_object"}); entry `<rule_prefix>root`.
std::string JsonObjectGbnf(const std::string& rule_prefix = "");

// Grammar::Parse(JsonSchemaToGbnf(schema)).
std::shared_ptr<const Grammar> CompileJsonSchema(const nlohmann::json& schema);

}  // namespace es::runtime
