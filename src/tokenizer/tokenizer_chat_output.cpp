#include "tokenizer/tokenizer_chat_output.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <utility>

namespace es::tok {
namespace {

using json = nlohmann::ordered_json;

constexpr std::string_view kThinkOpen = "<think>", kThinkClose = "</think>";
constexpr std::string_view kHermesOpen = "<tool_call>", kHermesClose = "</tool_call>";
constexpr std::string_view kPythonTag = "<|python_tag|>", kMistralCalls = "[TOOL_CALLS]",
                           kMistralArgs = "[ARGS]";

std::string_view TrimLeft(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r')) ++i;
  return s.substr(i);
}

std::string_view Trim(std::string_view s) {
  s = TrimLeft(s);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\n' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// The JSON value at the start of `s` and where it ends (one past); nullopt when it does not
// parse. The stream parser stops after one value, so what follows may be anything.
std::optional<std::pair<json, size_t>> ParsePrefix(std::string_view s) {
  std::istringstream is{std::string(s)};
  json j;
  try {
    is >> j;
  } catch (const json::exception&) {
    return std::nullopt;
  }
  const auto pos = is.tellg();
  return std::pair{std::move(j), pos < 0 ? s.size() : static_cast<size_t>(pos)};
}

std::optional<json> ParseJson(std::string_view s) {
  json j = json::parse(s.begin(), s.end(), nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

// {"name": ..., <args_key>: object | string} -> a call; nullopt when it is not one.
std::optional<ToolCall> CallFrom(const json& j, std::initializer_list<const char*> args_keys,
                                 int index) {
  if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) return std::nullopt;
  ToolCall c;
  c.name = j["name"].get<std::string>();
  c.arguments = "{}";
  for (const char* k : args_keys) {
    if (!j.contains(k)) continue;
    const json& a = j[k];
    if (a.is_string()) {
      c.arguments = a.get<std::string>();
    } else if (a.is_object()) {
      c.arguments = a.dump();
    } else {
      return std::nullopt;
    }
    break;
  }
  c.id = j.contains("id") && j["id"].is_string() ? j["id"].get<std::string>()
                                                 : "call_" + std::to_string(index);
  return c;
}

// The tool calls of `s` (text from the first tool marker on), or nullopt when it does not parse
// as that format's calls. `first`: the index the first call's default id takes.
std::optional<std::vector<ToolCall>> ParseCalls(std::string_view s, ToolCallFormat f, int first) {
  std::vector<ToolCall> calls;
  auto next_index = [&] { return first + static_cast<int>(calls.size()); };
  s = Trim(s);
  switch (f) {
    case ToolCallFormat::kNone:
      return std::nullopt;
    case ToolCallFormat::kHermes:
      while (!s.empty()) {
        if (s.substr(0, kHermesOpen.size()) != kHermesOpen) return std::nullopt;
        s = s.substr(kHermesOpen.size());
        const size_t close = s.find(kHermesClose);
        const auto body = ParseJson(Trim(s.substr(0, close)));
        if (!body) return std::nullopt;
        auto c = CallFrom(*body, {"arguments", "parameters"}, next_index());
        if (!c) return std::nullopt;
        calls.push_back(std::move(*c));
        s = close == std::string_view::npos ? std::string_view{}
                                            : TrimLeft(s.substr(close + kHermesClose.size()));
      }
      break;
    case ToolCallFormat::kLlama3:
      if (s.substr(0, kPythonTag.size()) == kPythonTag) s = TrimLeft(s.substr(kPythonTag.size()));
      while (!s.empty()) {
        const auto body = s.front() == '{' ? ParsePrefix(s) : std::nullopt;
        if (!body) return std::nullopt;
        auto c = CallFrom(body->first, {"parameters", "arguments"}, next_index());
        if (!c) return std::nullopt;
        calls.push_back(std::move(*c));
        s = TrimLeft(s.substr(body->second));
        if (!s.empty() && s.front() == ';') s = TrimLeft(s.substr(1));
      }
      break;
    case ToolCallFormat::kMistral:
      while (!s.empty()) {
        if (s.substr(0, kMistralCalls.size()) != kMistralCalls) return std::nullopt;
        s = TrimLeft(s.substr(kMistralCalls.size()));
        if (!s.empty() && s.front() == '[') {  // [{"name", "arguments", "id"}, ...]
          const auto arr = ParsePrefix(s);
          if (!arr || !arr->first.is_array() || arr->first.empty()) return std::nullopt;
          for (const json& j : arr->first) {
            auto c = CallFrom(j, {"arguments", "parameters"}, next_index());
            if (!c) return std::nullopt;
            calls.push_back(std::move(*c));
          }
          s = TrimLeft(s.substr(arr->second));
        } else {  // name[ARGS]{...}
          const size_t args = s.find(kMistralArgs);
          if (args == std::string_view::npos) return std::nullopt;
          ToolCall c;
          c.name = std::string(Trim(s.substr(0, args)));
          s = TrimLeft(s.substr(args + kMistralArgs.size()));
          const auto body = !s.empty() && s.front() == '{' ? ParsePrefix(s) : std::nullopt;
          if (c.name.empty() || !body || !body->first.is_object()) return std::nullopt;
          c.arguments = body->first.dump();
          c.id = "call_" + std::to_string(next_index());
          calls.push_back(std::move(c));
          s = TrimLeft(s.substr(body->second));
        }
      }
      break;
  }
  if (calls.empty()) return std::nullopt;
  return calls;
}

// Where the first tool call of `s` begins (npos: none). Llama 3's calls have no marker but a
// leading JSON object (or the python tag), so only the start of the content counts for them.
size_t FirstMarker(std::string_view s, ToolCallFormat f) {
  switch (f) {
    case ToolCallFormat::kHermes:
      return s.find(kHermesOpen);
    case ToolCallFormat::kMistral:
      return s.find(kMistralCalls);
    case ToolCallFormat::kLlama3: {
      const size_t lead = s.size() - TrimLeft(s).size();
      const std::string_view t = s.substr(lead);
      if (t.substr(0, kPythonTag.size()) == kPythonTag || (!t.empty() && t.front() == '{'))
        return lead;
      return std::string_view::npos;
    }
    case ToolCallFormat::kNone:
      break;
  }
  return std::string_view::npos;
}

// Length of the longest suffix of `s` that begins `marker` (text that may still become it).
size_t HeldBack(std::string_view s, std::string_view marker) {
  for (size_t n = std::min(s.size(), marker.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == marker.substr(0, n)) return n;
  return 0;
}

}  // namespace

ToolCallFormat ToolCallFormatFor(const std::string& t) {
  if (t.find("<tool_call>") != std::string::npos) return ToolCallFormat::kHermes;
  if (t.find("[TOOL_CALLS]") != std::string::npos) return ToolCallFormat::kMistral;
  if (t.find("<|python_tag|>") != std::string::npos ||
      (t.find("<|start_header_id|>") != std::string::npos && t.find("tools") != std::string::npos))
    return ToolCallFormat::kLlama3;
  return ToolCallFormat::kNone;
}

const char* ToolCallFormatName(ToolCallFormat f) {
  switch (f) {
    case ToolCallFormat::kHermes:
      return "hermes";
    case ToolCallFormat::kLlama3:
      return "llama3";
    case ToolCallFormat::kMistral:
      return "mistral";
    case ToolCallFormat::kNone:
      break;
  }
  return "none";
}

ChatOutput ParseChatOutput(std::string_view text, ToolCallFormat f, bool reasoning) {
  ChatOutput out;
  if (reasoning) {
    const std::string_view t = TrimLeft(text);
    const bool opened = t.substr(0, kThinkOpen.size()) == kThinkOpen;
    const std::string_view body = opened ? t.substr(kThinkOpen.size()) : text;
    const size_t close = body.find(kThinkClose);
    if (close != std::string_view::npos) {
      out.reasoning = std::string(Trim(body.substr(0, close)));
      text = TrimLeft(body.substr(close + kThinkClose.size()));
    } else if (opened) {  // cut off while thinking
      out.reasoning = std::string(Trim(body));
      return out;
    }
  }
  const size_t at = FirstMarker(text, f);
  if (at != std::string_view::npos) {
    if (auto calls = ParseCalls(text.substr(at), f, 0)) {
      out.content = std::string(Trim(text.substr(0, at)));
      out.tool_calls = std::move(*calls);
      return out;
    }
  }
  out.content = std::string(text);
  return out;
}

ChatOutputStream::ChatOutputStream(ToolCallFormat f, bool reasoning, bool think_open)
    : format_(f),
      in_reasoning_(reasoning && think_open),
      reasoning_possible_(reasoning && !think_open) {}

ChatOutputStream::Delta ChatOutputStream::Feed(std::string_view piece) {
  buf_.append(piece);
  return Drain(false);
}

ChatOutputStream::Delta ChatOutputStream::Finish() {
  return Drain(true);
}

ChatOutputStream::Delta ChatOutputStream::Drain(bool final) {
  Delta d;
  if (reasoning_possible_) {
    // Undecided until the text is long enough to show whether it opens with <think>.
    const std::string_view t = TrimLeft(buf_);
    if (t.size() < kThinkOpen.size() && kThinkOpen.substr(0, t.size()) == t && !final) return d;
    reasoning_possible_ = false;
    if (t.substr(0, kThinkOpen.size()) == kThinkOpen) {
      in_reasoning_ = true;
      buf_ = std::string(TrimLeft(t.substr(kThinkOpen.size())));
    }
  }
  if (in_reasoning_) {
    const size_t close = buf_.find(kThinkClose);
    if (close == std::string::npos) {
      const size_t keep = final ? 0 : HeldBack(buf_, kThinkClose);
      d.reasoning = buf_.substr(0, buf_.size() - keep);
      buf_.erase(0, buf_.size() - keep);
      return d;
    }
    d.reasoning = buf_.substr(0, close);
    buf_ = std::string(TrimLeft(std::string_view(buf_).substr(close + kThinkClose.size())));
    in_reasoning_ = false;
  }
  const size_t at = FirstMarker(buf_, format_);
  // Blank text after a call is layout until something else shows: held back, dropped when
  // another call or the end follows (as the whole parse trims it).
  const bool blank_after_call =
      n_calls_ > 0 && TrimLeft(std::string_view(buf_).substr(0, std::min(at, buf_.size()))).empty();
  if (blank_after_call && (at != std::string::npos || final)) {
    buf_.erase(0, std::min(at, buf_.size()));
    if (at == std::string::npos) return d;
  } else if (blank_after_call) {
    return d;
  }
  if (at == std::string::npos) {
    // Content, but Llama 3's calls are only recognised at the very start of the content.
    const std::string_view lead = TrimLeft(buf_);
    const bool undecided_start = format_ == ToolCallFormat::kLlama3 && n_calls_ == 0 && !final &&
                                 kPythonTag.substr(0, lead.size()) == lead;
    size_t keep = 0;
    if (!final) {
      if (format_ == ToolCallFormat::kHermes) keep = HeldBack(buf_, kHermesOpen);
      if (format_ == ToolCallFormat::kMistral) keep = HeldBack(buf_, kMistralCalls);
      if (undecided_start) keep = buf_.size();
    }
    d.content += buf_.substr(0, buf_.size() - keep);
    buf_.erase(0, buf_.size() - keep);
    if (format_ == ToolCallFormat::kLlama3 && !TrimLeft(d.content).empty())
      format_ = ToolCallFormat::kNone;  // plain text started: no call can follow
    return d;
  }
  const size_t lead = blank_after_call ? 0 : at;
  d.content += buf_.substr(0, lead);
  buf_.erase(0, lead);
  // A Hermes call is whole at its closing tag; the other formats run to the end of the output.
  size_t end = std::string::npos;
  if (format_ == ToolCallFormat::kHermes) {
    const size_t close = buf_.find(kHermesClose);
    if (close != std::string::npos) end = close + kHermesClose.size();
  }
  if (end == std::string::npos && !final) return d;
  const std::string region = end == std::string::npos ? buf_ : buf_.substr(0, end);
  if (auto calls = ParseCalls(region, format_, n_calls_)) {
    n_calls_ += static_cast<int>(calls->size());
    d.tool_calls = std::move(*calls);
  } else {
    d.content += region;  // not a call after all: the text is content
  }
  // What follows a call up to the next one is layout, not content.
  buf_ = std::string(TrimLeft(std::string_view(buf_).substr(region.size())));
  if (!buf_.empty()) {
    Delta more = Drain(final);
    d.content += more.content;
    for (auto& c : more.tool_calls) d.tool_calls.push_back(std::move(c));
  }
  return d;
}

}  // namespace es::tok
