#include "tokenizer/tokenizer_chat.h"

#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>

#include "edgeshard/error.h"
#include "tokenizer/tokenizer_jinja.h"

namespace es::tok {

namespace {

// The mistral-v1/v3/v3-tekken forms differ in the spaces around [INST] and in trimming replies.
std::string MistralForm(const char* lead, const char* trail, bool trim_reply) {
  return std::string("{% set lead = '") + lead + "' %}{% set trail = '" + trail +
         "' %}{% set trim_reply = " + (trim_reply ? "true" : "false") + " %}" +
         R"({% set eos = eos_token or '</s>' %}{% set ns = namespace(in_turn=false) %})"
         R"({% for m in messages %}{% if not ns.in_turn %}{{ lead + '[INST]' + trail }})"
         R"({% set ns.in_turn = true %}{% endif %}{% if m.role == 'system' %}{{ m.content + '\n\n' }})"
         R"({% elif m.role == 'user' %}{{ m.content + lead + '[/INST]' }}{% else %})"
         R"({{ trail + (m.content | trim if trim_reply else m.content) + eos }})"
         R"({% set ns.in_turn = false %}{% endif %}{% endfor %})";
}

// The llama2 forms: <<SYS>> support, BOS before later turns, stripped contents. The first
// [INST] follows the BOS the tokenizer adds; without <<SYS>> the system text leads it.
std::string Llama2Form(bool sys, bool bos_in_history, bool strip) {
  return std::string("{% set sys = ") + (sys ? "true" : "false") +
         " %}{% set bos_hist = " + (bos_in_history ? "true" : "false") +
         " %}{% set strip = " + (strip ? "true" : "false") + " %}" +
         R"({% set bos = bos_token or '<s>' %}{% set eos = eos_token or '</s>' %})"
         R"({% set ns = namespace(in_turn=true) %}[INST] {% for m in messages %})"
         R"({% set content = m.content | trim if strip else m.content %})"
         R"({% if not ns.in_turn %}{% set ns.in_turn = true %})"
         R"({{ (bos if bos_hist else '') + '[INST] ' }}{% endif %})"
         R"({% if m.role == 'system' %})"
         R"({{ '<<SYS>>\n' + content + '\n<</SYS>>\n\n' if sys else content + '\n' }})"
         R"({% elif m.role == 'user' %}{{ content + ' [/INST]' }})"
         R"({% else %}{{ content + eos }}{% set ns.in_turn = false %}{% endif %}{% endfor %})";
}

// Role-tagged turns "<open><role><close>content<end>" and an assistant opening.
std::string TaggedForm(const char* open, const char* close, const char* end, const char* gen) {
  return std::string("{% set eos = eos_token or '</s>' %}{% for m in messages %}{{ '") + open +
         "' + m.role + '" + close + "' + m.content + " + end +
         " }}{% endfor %}{% if add_generation_prompt %}{{ '" + gen + "' }}{% endif %}";
}

const std::map<std::string, std::string>& Builtins() {
  static const std::map<std::string, std::string> t = {
      {"chatml", TaggedForm("<|im_start|>", "\\n", "'<|im_end|>\\n'", "<|im_start|>assistant\\n")},
      {"llama2", Llama2Form(false, false, false)},
      {"mistral", Llama2Form(false, false, false)},
      {"llama2-sys", Llama2Form(true, false, false)},
      {"llama2-sys-bos", Llama2Form(true, true, false)},
      {"llama2-sys-strip", Llama2Form(true, false, true)},
      {"llama3",
       R"({% for m in messages %}{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' )"
       R"(+ m.content | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %})"
       R"({{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})"},
      {"mistral-v1", MistralForm(" ", " ", false)},
      {"mistral-v3", MistralForm("", " ", true)},
      {"mistral-v3-tekken", MistralForm("", "", false)},
      {"mistral-v7",
       R"({% set eos = eos_token or '</s>' %}{% for m in messages %}{% if m.role == 'system' %})"
       R"({{ '[SYSTEM_PROMPT] ' + m.content + '[/SYSTEM_PROMPT]' }})"
       R"({% elif m.role == 'user' %}{{ '[INST] ' + m.content + '[/INST]' }})"
       R"({% else %}{{ ' ' + m.content + eos }}{% endif %}{% endfor %})"},
      {"zephyr", TaggedForm("<|", "|>\\n", "eos + '\\n'", "<|assistant|>\\n")},
      {"phi3", TaggedForm("<|", "|>\\n", "'<|end|>\\n'", "<|assistant|>\\n")},
      {"falcon3", TaggedForm("<|", "|>\\n", "'\\n'", "<|assistant|>\\n")},
      // Gemma has no system role: the system text is folded into the next user turn.
      {"gemma",
       R"({% set ns = namespace(system='') %}{% for m in messages %}{% if m.role == 'system' %})"
       R"({% set ns.system = ns.system + m.content | trim %}{% else %})"
       R"({% set role = 'model' if m.role == 'assistant' else m.role %})"
       R"({{ '<start_of_turn>' + role + '\n' }}{% if ns.system and role != 'model' %})"
       R"({{ ns.system + '\n\n' }}{% set ns.system = '' %}{% endif %})"
       R"({{ m.content | trim + '<end_of_turn>\n' }}{% endif %}{% endfor %})"
       R"({% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %})"},
  };
  return t;
}

std::string SupportedList() {
  std::string s;
  for (const auto& n : ChatTemplateNames()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

bool LooksLikeJinja(const std::string& t) {
  return t.find("{{") != std::string::npos || t.find("{%") != std::string::npos;
}

// Recognises a template's family by marker strings, in llama.cpp's order (first match wins).
std::string Detect(const std::string& t) {
  const auto has = [&](const char* s) { return t.find(s) != std::string::npos; };
  if (has("<|im_start|>")) return has("<|im_sep|>") ? "jinja" : "chatml";
  if (t.rfind("mistral", 0) == 0 || has("[INST]")) {
    if (has("[SYSTEM_PROMPT]")) return "mistral-v7";
    if (has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]")) {
      if (has(" [INST]")) return "mistral-v1";
      if (has("\"[INST]\"")) return "mistral-v3-tekken";
      return "mistral-v3";
    }
    if (has("content.strip()")) return "llama2-sys-strip";
    if (has("bos_token + '[INST]")) return "llama2-sys-bos";
    if (has("<<SYS>>")) return "llama2-sys";
    return "llama2";
  }
  if (has("<|assistant|>") && has("<|end|>")) return "phi3";
  if (has("<|assistant|>") && has("<|user|>") && has("</s>")) return "falcon3";
  if (has("<|user|>") && (has("<|endoftext|>") || has("</s>") || has("eos_token"))) return "zephyr";
  if (has("<start_of_turn>")) return "gemma";
  if (has("<|start_header_id|>") && has("<|end_header_id|>")) return "llama3";
  return "jinja";
}

// Parsed templates by text: a chat session renders the same template every turn.
std::shared_ptr<const jinja::Template> Compile(const std::string& text) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const jinja::Template>> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(text);
    if (it != cache.end()) return it->second;
  }
  auto t = std::make_shared<const jinja::Template>(text);
  std::lock_guard<std::mutex> lock(mu);
  if (cache.size() >= 16) cache.clear();
  cache[text] = t;
  return t;
}

// llama-server hands templates tool-call arguments as objects, though OpenAI sends JSON text.
nlohmann::ordered_json NormalizeMessages(const nlohmann::ordered_json& messages) {
  nlohmann::ordered_json out = messages;
  if (!out.is_array()) throw Error("chat messages must be a list");
  for (auto& m : out) {
    if (!m.is_object() || !m.contains("tool_calls") || !m["tool_calls"].is_array()) continue;
    for (auto& call : m["tool_calls"]) {
      if (!call.is_object() || !call.contains("function") || !call["function"].is_object())
        continue;
      auto& fn = call["function"];
      if (!fn.contains("arguments") || !fn["arguments"].is_string()) continue;
      auto parsed =
          nlohmann::ordered_json::parse(fn["arguments"].get<std::string>(), nullptr, false);
      if (!parsed.is_discarded()) fn["arguments"] = std::move(parsed);
    }
  }
  return out;
}

}  // namespace

const std::vector<std::string>& ChatTemplateNames() {
  static const std::vector<std::string> names = {
      "chatml",     "llama2",  "llama2-sys", "llama2-sys-bos", "llama2-sys-strip",
      "llama3",     "mistral", "mistral-v1", "mistral-v3",     "mistral-v3-tekken",
      "mistral-v7", "zephyr",  "phi3",       "gemma",          "falcon3"};
  return names;
}

std::string ChatTemplateName(const std::string& tmpl_or_name) {
  if (Builtins().count(tmpl_or_name)) return tmpl_or_name;
  if (LooksLikeJinja(tmpl_or_name)) return Detect(tmpl_or_name);
  std::string head = tmpl_or_name.substr(0, 60);
  std::replace(head.begin(), head.end(), '\n', ' ');
  throw Error("unknown chat template '" + head + (tmpl_or_name.size() > 60 ? "...'" : "'") +
              ": built-in names are " + SupportedList() +
              "; pass --chat-template NAME to use one of them, or give the template's Jinja text");
}

std::string ChatTemplateOrDefault(const std::string& override_tmpl,
                                  const std::optional<std::string>& model_tmpl,
                                  const std::string& model_name) {
  if (!override_tmpl.empty()) return override_tmpl;
  if (model_tmpl && !model_tmpl->empty()) return *model_tmpl;
  static std::once_flag said;
  std::call_once(said, [&] {
    std::cerr << model_name
              << ": the model has no chat template (tokenizer.chat_template); using chatml "
                 "(pass --chat-template NAME to choose another)\n";
  });
  return "chatml";
}

std::string ChatTemplateText(const std::string& tmpl_or_name) {
  auto it = Builtins().find(tmpl_or_name);
  return it != Builtins().end() ? it->second : tmpl_or_name;
}

std::string RenderChat(const std::string& tmpl_or_name, const ChatInputs& in) {
  ChatTemplateName(tmpl_or_name);  // rejects unknown names with the list of built-ins
  const std::string text = ChatTemplateText(tmpl_or_name);
  nlohmann::ordered_json ctx = in.extra.is_object() ? in.extra : nlohmann::ordered_json::object();
  ctx["messages"] = NormalizeMessages(in.messages);
  ctx["tools"] = in.tools;
  ctx["add_generation_prompt"] = in.add_generation_prompt;
  ctx["bos_token"] = in.bos_token;
  ctx["eos_token"] = in.eos_token;
  return Compile(text)->Render(ctx, in.now);
}

std::string ApplyChatTemplate(const std::string& tmpl_or_name, const std::vector<ChatMessage>& msgs,
                              bool add_assistant_prompt, const std::string& bos_text,
                              const std::string& eos_text, const nlohmann::ordered_json& extra) {
  ChatInputs in;
  in.extra = extra;
  for (const auto& m : msgs) in.messages.push_back({{"role", m.role}, {"content", m.content}});
  in.add_generation_prompt = add_assistant_prompt;
  in.bos_token = bos_text;
  in.eos_token = eos_text;
  return RenderChat(tmpl_or_name, in);
}

nlohmann::ordered_json ParseJinjaVars(const std::vector<std::string>& vars) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const auto& v : vars) {
    const size_t eq = v.find('=');
    if (eq == std::string::npos || eq == 0)
      throw Error("template variable '" + v + "' is not NAME=VALUE");
    auto value = nlohmann::ordered_json::parse(v.substr(eq + 1), nullptr, false);
    out[v.substr(0, eq)] = value.is_discarded() ? nlohmann::ordered_json(v.substr(eq + 1)) : value;
  }
  return out;
}

}  // namespace es::tok
