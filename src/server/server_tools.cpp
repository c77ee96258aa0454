#include "server/server_tools.h"

#include <cctype>
#include <random>
#include <set>

#include "edgeshard/error.h"
#include "runtime/runtime_json_schema.h"
#include "server/server_openai.h"

namespace es::server {
namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

ojson Ordered(const json& j) {
  return ojson::parse(j.dump());
}

std::string Text(const json& v, const std::string& where) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string text;
    for (const auto& part : v) {
      if (!part.is_object() || !part.contains("type") || part["type"] != "text" ||
          !part.contains("text") || !part["text"].is_string())
        throw ApiError(
            400,
            where + ": only text parts ({\"type\": \"text\", \"text\": ...}) are supported, got " +
                Quote(part),
            where);
      text += part["text"].get<std::string>();
    }
    return text;
  }
  throw ApiError(400, where + " must be a string or an array of text parts, got " + Quote(v),
                 where);
}

const json& Need(const json& obj, const char* key, const std::string& where) {
  const json* v = Field(obj, key);
  if (!v) throw ApiError(400, where + "." + key + " is required", where + "." + key);
  return *v;
}

std::string NeedString(const json& obj, const char* key, const std::string& where) {
  const json& v = Need(obj, key, where);
  if (!v.is_string() || v.get_ref<const std::string&>().empty())
    throw ApiError(400, where + "." + key + " must be a non-empty string, got " + Quote(v),
                   where + "." + key);
  return v.get<std::string>();
}

// OpenAI's rule for function names; the templates and the call grammar quote them as they are.
bool ValidName(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-'))
      return false;
  return true;
}

// An assistant turn's earlier calls: [{"id", "type": "function", "function": {"name",
// "arguments": JSON text}}].
ojson AssistantCalls(const json& calls, const std::string& where) {
  if (!calls.is_array())
    throw ApiError(400, where + " must be an array of tool calls, got " + Quote(calls), where);
  ojson out = ojson::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    const std::string w = where + "[" + std::to_string(i) + "]";
    const json& c = calls[i];
    if (!c.is_object()) throw ApiError(400, w + " must be an object, got " + Quote(c), w);
    if (const json* t = Field(c, "type"); t && *t != "function")
      throw ApiError(400, w + ".type must be \"function\", got " + Quote(*t), w + ".type");
    const std::string id = NeedString(c, "id", w);
    const json& fn = Need(c, "function", w);
    if (!fn.is_object())
      throw ApiError(400, w + ".function must be an object, got " + Quote(fn), w + ".function");
    const std::string name = NeedString(fn, "name", w + ".function");
    const json& args = Need(fn, "arguments", w + ".function");
    if (!args.is_string() && !args.is_object())
      throw ApiError(400, w + ".function.arguments must be a JSON text, got " + Quote(args),
                     w + ".function.arguments");
    out.push_back({{"id", id},
                   {"type", "function"},
                   {"function", {{"name", name}, {"arguments", Ordered(args)}}}});
  }
  return out;
}

char Alnum(std::mt19937_64& rng) {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  return kChars[rng() % (sizeof kChars - 1)];
}

}  // namespace

ToolRequest ParseToolFields(const json& body) {
  ToolRequest t;
  std::set<std::string> names;
  if (const json* tools = Field(body, "tools")) {
    if (!tools->is_array())
      throw ApiError(400, "'tools' must be an array of tools, got " + Quote(*tools), "tools");
    for (size_t i = 0; i < tools->size(); ++i) {
      const std::string w = "tools[" + std::to_string(i) + "]";
      const json& tool = (*tools)[i];
      if (!tool.is_object()) throw ApiError(400, w + " must be an object, got " + Quote(tool), w);
      const json& type = Need(tool, "type", w);
      if (type != "function")
        throw ApiError(400,
                       w + ".type must be \"function\" (only function tools are supported), got " +
                           Quote(type),
                       w + ".type");
      const json& fn = Need(tool, "function", w);
      if (!fn.is_object())
        throw ApiError(400, w + ".function must be an object, got " + Quote(fn), w + ".function");
      const std::string name = NeedString(fn, "name", w + ".function");
      if (!ValidName(name))
        throw ApiError(400,
                       w + ".function.name must be 1 to 64 letters, digits, '_' or '-', got " +
                           Quote(json(name)),
                       w + ".function.name");
      if (!names.insert(name).second)
        throw ApiError(400, w + ".function.name " + Quote(json(name)) + " names a second tool",
                       w + ".function.name");
      if (const json* d = Field(fn, "description"); d && !d->is_string())
        throw ApiError(400, w + ".function.description must be a string, got " + Quote(*d),
                       w + ".function.description");
      if (const json* p = Field(fn, "parameters"); p && !p->is_object())
        throw ApiError(400,
                       w + ".function.parameters must be a JSON schema object, got " + Quote(*p),
                       w + ".function.parameters");
      (void)BoolField(fn, "strict", false);
      t.tools.push_back(Ordered(tool));
    }
  }
  if (const json* c = Field(body, "tool_choice")) {
    if (*c == "none") {
      t.choice = ToolChoice::kNone;
    } else if (*c == "auto") {
      t.choice = ToolChoice::kAuto;
    } else if (*c == "required") {
      t.choice = ToolChoice::kRequired;
    } else if (c->is_object() && c->value("type", json()) == "function") {
      const json& fn = Need(*c, "function", "tool_choice");
      if (!fn.is_object())
        throw ApiError(400, "tool_choice.function must be an object, got " + Quote(fn),
                       "tool_choice");
      t.named = NeedString(fn, "name", "tool_choice.function");
      t.choice = ToolChoice::kNamed;
      if (!names.count(t.named))
        throw ApiError(
            400,
            "tool_choice names the function " + Quote(json(t.named)) + ", which is not in 'tools'",
            "tool_choice");
    } else {
      throw ApiError(400,
                     "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": "
                     "\"function\", \"function\": {\"name\": ...}}, got " +
                         Quote(*c),
                     "tool_choice");
    }
    if ((t.choice == ToolChoice::kRequired || t.choice == ToolChoice::kNamed) && t.tools.empty())
      throw ApiError(400, "'tool_choice' " + Quote(*c) + " needs 'tools' to choose from",
                     "tool_choice");
  }
  t.parallel = BoolField(body, "parallel_tool_calls", true);
  if (const json* r = Field(body, "reasoning_format")) {
    if (*r == "auto") {
      t.reasoning = ReasoningFormat::kAuto;
    } else if (*r == "none") {
      t.reasoning = ReasoningFormat::kNone;
    } else if (*r == "deepseek") {
      t.reasoning = ReasoningFormat::kDeepseek;
    } else {
      throw ApiError(400,
                     "'reasoning_format' must be \"auto\", \"deepseek\" or \"none\" "
                     "(deepseek-legacy is not supported), got " +
                         Quote(*r),
                     "reasoning_format");
    }
  }
  return t;
}

void RefuseToolsOutsideChat(const json& body) {
  const json* tools = Field(body, "tools");
  const json* choice = Field(body, "tool_choice");
  const char* field = tools && !(tools->is_array() && tools->empty())    ? "tools"
                      : choice && *choice != "none" && *choice != "auto" ? "tool_choice"
                                                                         : nullptr;
  if (field)
    throw ApiError(400,
                   std::string("'") + field +
                       "' is only for /v1/chat/completions: completions have no tool calls",
                   field);
}

ojson ParseChatMessages(const json& body) {
  const json* msgs = Field(body, "messages");
  if (!msgs) throw ApiError(400, "'messages' is required", "messages");
  if (!msgs->is_array() || msgs->empty())
    throw ApiError(400, "'messages' must be a non-empty array of messages, got " + Quote(*msgs),
                   "messages");
  ojson out = ojson::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw ApiError(400, where + " must be an object, got " + Quote(m), where);
    const json* role = Field(m, "role");
    if (!role || !role->is_string())
      throw ApiError(400, where + ".role must be a string", where + ".role");
    std::string rs = role->get<std::string>();
    if (rs == "developer") rs = "system";
    if (rs != "system" && rs != "user" && rs != "assistant" && rs != "tool")
      throw ApiError(400,
                     where +
                         ".role must be \"system\", \"developer\", \"user\", \"assistant\" or "
                         "\"tool\", got " +
                         Quote(*role),
                     where + ".role");
    // An absent or null content is "" (e.g. an assistant turn that only called tools).
    const json* content = Field(m, "content");
    ojson msg = {{"role", rs},
                 {"content", content ? Text(*content, where + ".content") : std::string()}};
    if (const json* calls = Field(m, "tool_calls")) {
      if (rs != "assistant")
        throw ApiError(400, where + ".tool_calls is only allowed on assistant messages",
                       where + ".tool_calls");
      ojson c = AssistantCalls(*calls, where + ".tool_calls");
      if (!c.empty()) msg["tool_calls"] = std::move(c);
    }
    if (rs == "tool") msg["tool_call_id"] = NeedString(m, "tool_call_id", where);
    if (const json* name = Field(m, "name")) {
      if (!name->is_string())
        throw ApiError(400, where + ".name must be a string, got " + Quote(*name), where + ".name");
      msg["name"] = name->get<std::string>();
    }
    // Reasoning a client sends back: templates that keep it (Qwen3) show it.
    if (const json* rc = Field(m, "reasoning_content"); rc && rs == "assistant")
      msg["reasoning_content"] = Text(*rc, where + ".reasoning_content");
    out.push_back(std::move(msg));
  }
  return out;
}

void CheckToolsRendered(const ToolRequest& t, const std::string& template_text,
                        const std::string& prompt) {
  if (!t.active()) return;
  if (tok::ToolCallFormatFor(template_text) == tok::ToolCallFormat::kNone)
    throw ApiError(400,
                   "the chat template has no tool-call syntax this server reads (Hermes/Qwen "
                   "<tool_call>, Llama 3.x JSON, Mistral [TOOL_CALLS]): send no 'tools' (or "
                   "tool_choice \"none\"), or start the server with a template that supports "
                   "tools (--chat-template-file)",
                   "tools");
  for (const auto& tool : t.tools) {
    const std::string name = tool["function"]["name"].get<std::string>();
    if (prompt.find(name) == std::string::npos)
      throw ApiError(400,
                     "the chat template did not show the tool " + Quote(json(name)) +
                         " to the model (it ignores 'tools'): start the server with a template "
                         "that renders tools (--chat-template-file)",
                     "tools");
  }
}

ChatPlan PlanChatOutput(const ToolRequest& t, const std::string& template_text,
                        const std::string& prompt_tail) {
  ChatPlan p;
  if (t.active()) p.format = tok::ToolCallFormatFor(template_text);
  p.parallel = t.parallel;
  if (t.reasoning != ReasoningFormat::kNone) {
    // A template that never writes <think> has no reasoning to split off.
    size_t end = prompt_tail.find_last_not_of(" \n\r\t");
    const std::string tail = end == std::string::npos ? "" : prompt_tail.substr(0, end + 1);
    auto ends = [&](const std::string& s) {
      return tail.size() >= s.size() && tail.compare(tail.size() - s.size(), s.size(), s) == 0;
    };
    p.think_open = ends("<think>");
    p.think_closed = ends("</think>");
    p.reasoning = p.think_open || template_text.find("<think>") != std::string::npos;
  }
  return p;
}

std::vector<std::string> MarkerTexts(const ChatPlan& p) {
  std::vector<std::string> out;
  switch (p.format) {
    case tok::ToolCallFormat::kHermes:
      out = {"<tool_call>", "</tool_call>"};
      break;
    case tok::ToolCallFormat::kLlama3:
      out = {"<|python_tag|>"};
      break;
    case tok::ToolCallFormat::kMistral:
      out = {"[TOOL_CALLS]", "[ARGS]"};
      break;
    case tok::ToolCallFormat::kNone:
      break;
  }
  if (p.reasoning) out.insert(out.end(), {"<think>", "</think>"});
  return out;
}

std::string ToolCallGbnf(const ToolRequest& t, const ChatPlan& p) {
  if (t.choice != ToolChoice::kRequired && t.choice != ToolChoice::kNamed) return "";
  // One alternative per callable tool: the call exactly as the format writes it, its arguments
  // JSON valid under the tool's parameters (any object when it gives none).
  std::string rules, calls;
  for (size_t i = 0; i < t.tools.size(); ++i) {
    const auto& fn = t.tools[i]["function"];
    const std::string name = fn["name"].get<std::string>();
    if (t.choice == ToolChoice::kNamed && name != t.named) continue;
    const std::string prefix = "tool" + std::to_string(i) + "-";
    json schema = fn.contains("parameters") && !fn["parameters"].is_null()
                      ? json::parse(fn["parameters"].dump())
                      : json{{"type", "object"}};
    // Arguments are an object: a schema that says nothing of the type gets it, one that names
    // another type cannot describe arguments.
    const std::string where = "tools[" + std::to_string(i) + "].function.parameters";
    if (!schema.contains("type") && !schema.contains("$ref") && !schema.contains("anyOf") &&
        !schema.contains("oneOf") && !schema.contains("allOf"))
      schema["type"] = "object";
    else if (schema.contains("type") && schema["type"] != "object")
      throw ApiError(
          400,
          where + " must describe an object (the arguments), got type " + Quote(schema["type"]),
          where);
    try {
      rules += runtime::JsonSchemaToGbnf(schema, prefix) + "\n";
    } catch (const Error& e) {
      throw ApiError(400, where + " cannot constrain a forced call: " + e.what(), where);
    }
    // Names are letters, digits, '_' and '-' (ParseToolFields): nothing to escape.
    const std::string head = p.format == tok::ToolCallFormat::kLlama3 ? "parameters" : "arguments";
    calls += std::string(calls.empty() ? "" : " | ") + "\"{\\\"name\\\": \\\"" + name +
             "\\\", \\\"" + head + "\\\": \" " + prefix + "root \"}\"";
  }
  rules += "call-json ::= " + calls + "\n";
  std::string root;
  switch (p.format) {
    case tok::ToolCallFormat::kHermes:
      rules += "call ::= \"<tool_call>\\n\" call-json \"\\n</tool_call>\"\n";
      root = p.parallel ? "call (\"\\n\" call)*" : "call";
      break;
    case tok::ToolCallFormat::kLlama3:
      root = p.parallel ? "call-json (\"; \" call-json)*" : "call-json";
      break;
    case tok::ToolCallFormat::kMistral:
      root = std::string("\"[TOOL_CALLS][\" call-json ") +
             (p.parallel ? "(\", \" call-json)* " : "") + "\"]\"";
      break;
    case tok::ToolCallFormat::kNone:
      return "";
  }
  // A reasoning model may think first, unless the prompt already closed (or opened) the block;
  // an opened block must be closed before the call.
  if (p.think_open) {
    root = "[^<]* \"</think>\" [ \\n]* " + root;
  } else if (p.reasoning && !p.think_closed) {
    root = "(\"<think>\" [^<]* \"</think>\" [ \\n]*)? " + root;
  }
  return "root ::= " + root + "\n" + rules;
}

std::string ToolCallId(tok::ToolCallFormat f, const std::string& given) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const bool mistral = f == tok::ToolCallFormat::kMistral;
  if (mistral && given.size() == 9) {
    bool ok = true;
    for (char c : given) ok = ok && std::isalnum(static_cast<unsigned char>(c));
    if (ok) return given;
  }
  std::string id = mistral ? "" : "call_";
  for (int i = 0; i < (mistral ? 9 : 24); ++i) id += Alnum(rng);
  return id;
}

json ToolCallJson(const tok::ToolCall& c) {
  return json{{"id", c.id},
              {"type", "function"},
              {"function", {{"name", c.name}, {"arguments", c.arguments}}}};
}

ChatReply::ChatReply(const ChatPlan& p)
    : plan_(p),
      stream_(p.format, p.reasoning, p.think_open),
      progressive_(p.forced && p.format == tok::ToolCallFormat::kHermes) {}

ReplyDelta ChatReply::Feed(const std::string& text, bool final) {
  tok::ChatOutputStream::Delta d;
  if (!plan_.active()) {
    d.content = text;
  } else {
    d = stream_.Feed(text);
    if (final) {
      auto rest = stream_.Finish();
      d.reasoning += rest.reasoning;
      d.content += rest.content;
      for (auto& c : rest.tool_calls) d.tool_calls.push_back(std::move(c));
    }
  }
  if (progressive_) raw_ += text;
  // One call only when parallel calls are off, as OpenAI answers then.
  if (!plan_.parallel && whole_.tool_calls.size() + d.tool_calls.size() > 1)
    d.tool_calls.resize(whole_.tool_calls.empty() ? 1 : 0);
  ReplyDelta out{d.reasoning, d.content, {}};
  for (tok::ToolCall& c : d.tool_calls) {
    if (progressive_ && !partial_.open) OpenPartial(out);
    if (partial_.open) {
      // The call as it was streamed: its arguments as written (the grammar made them the JSON
      // the parse read), so the whole body says what the stream said, however the text came.
      StreamArguments(out);
      c.id = partial_.id;
      if (partial_.closed) c.arguments = partial_.sent;
      const size_t close = raw_.find("</tool_call>", partial_.args_at + partial_.sent.size());
      search_from_ = close == std::string::npos ? raw_.size() : close + 12;
      partial_ = Partial{};
    } else {
      c.id = ToolCallId(plan_.format, c.id);
      const size_t index = whole_.tool_calls.size();
      out.calls.push_back({index, true, c.id, c.name, ""});
      out.calls.push_back({index, false, "", "", c.arguments});
    }
    whole_.tool_calls.push_back(c);
  }
  if (progressive_) {
    if (!partial_.open) OpenPartial(out);
    if (partial_.open) StreamArguments(out);
    if (final && partial_.open) {
      // Cut off inside the call (max_tokens): it stays the call the stream began, with the
      // arguments written so far, rather than turning into content.
      const size_t at = d.content.find("<tool_call>");
      if (at != std::string::npos) {
        d.content.erase(at);
        out.content = d.content;
      }
      whole_.tool_calls.push_back({partial_.id, partial_.name, partial_.sent});
      partial_ = Partial{};
    }
  }
  whole_.reasoning += d.reasoning;
  whole_.content += d.content;
  return out;
}

void ChatReply::OpenPartial(ReplyDelta& out) {
  const size_t at = raw_.find("<tool_call>", search_from_);
  if (at == std::string::npos) return;
  size_t i = at + 11;
  const auto lit = [&](std::string_view s) {
    while (i < raw_.size() && std::isspace(static_cast<unsigned char>(raw_[i]))) ++i;
    if (raw_.compare(i, s.size(), s) != 0) return false;
    i += s.size();
    return true;
  };
  if (!lit("{") || !lit("\"name\"") || !lit(":") || !lit("\"")) return;
  const size_t end = raw_.find('"', i);
  if (end == std::string::npos) return;
  const std::string name = raw_.substr(i, end - i);
  i = end + 1;
  if (!lit(",") || !lit("\"arguments\"") || !lit(":") || !lit("{")) return;
  partial_ = Partial{};
  partial_.open = true;
  partial_.index = whole_.tool_calls.size();
  partial_.id = ToolCallId(plan_.format, "");
  partial_.name = name;
  partial_.args_at = i - 1;
  out.calls.push_back({partial_.index, true, partial_.id, name, ""});
}

void ChatReply::StreamArguments(ReplyDelta& out) {
  Partial& p = partial_;
  const size_t from = p.args_at + p.sent.size();
  size_t j = from;
  // Up to the object's closing brace, strings read over (braces inside them do not count).
  for (; j < raw_.size() && !p.closed; ++j) {
    const char ch = raw_[j];
    if (p.in_string) {
      if (p.escaped)
        p.escaped = false;
      else if (ch == '\\')
        p.escaped = true;
      else if (ch == '"')
        p.in_string = false;
    } else if (ch == '"') {
      p.in_string = true;
    } else if (ch == '{' || ch == '[') {
      ++p.depth;
    } else if ((ch == '}' || ch == ']') && --p.depth == 0) {
      p.closed = true;
    }
  }
  // A piece never ends inside a UTF-8 character (JSON text is whole characters); the scan state
  // above changes on ASCII bytes only, so leaving continuation bytes for later is safe.
  if (!p.closed) {
    size_t lead = j;
    while (lead > from && (static_cast<unsigned char>(raw_[lead - 1]) & 0xC0) == 0x80) --lead;
    if (lead > from) {
      const auto c = static_cast<unsigned char>(raw_[lead - 1]);
      const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      if (j - (lead - 1) < len) j = lead - 1;
    }
  }
  if (j <= from) return;
  std::string piece = raw_.substr(from, j - from);
  p.sent += piece;
  out.calls.push_back({p.index, false, "", "", std::move(piece)});
}

}  // namespace es::server
