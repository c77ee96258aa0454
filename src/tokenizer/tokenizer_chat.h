// Chat prompt formatting: renders a model's own tokenizer.chat_template (Jinja, through
// tokenizer_jinja.h) or one of the built-in templates named by --chat-template NAME.
#pragma once
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace es::tok {

struct ChatMessage {
  std::string role, content;
};

// Names of the built-in templates (small Jinja texts) accepted wherever a template is.
const std::vector<std::string>& ChatTemplateNames();

// What `tmpl_or_name` is: a built-in name as given; for Jinja text, the family it resembles
// (chatml, llama3, ...; marker strings as llama.cpp b4748 recognised them) or "jinja". Throws
// es::Error listing the names for an unknown name or an empty string.
std::string ChatTemplateName(const std::string& tmpl_or_name);

// The Jinja text of a template: a built-in name's text, or `tmpl_or_name` itself.
std::string ChatTemplateText(const std::string& tmpl_or_name);

// The template a model chats with: `override_tmpl` when set, else the model's own, else chatml
// (saying so once on stderr, since the model's expected format is unknown).
std::string ChatTemplateOrDefault(const std::string& override_tmpl,
                                  const std::optional<std::string>& model_tmpl,
                                  const std::string& model_name);

// Everything a chat template sees, in the OpenAI request's shape.
struct ChatInputs {
  // [{"role": ..., "content": string | [{"type": "text", "text": ...}] | null,
  //   "tool_calls": [{"id", "type": "function", "function": {"name", "arguments"}}], ...}]
  // Tool call arguments given as JSON strings reach the template as objects (as llama-server).
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  nlohmann::ordered_json tools;  // a list of OpenAI tool dicts; null: none
  bool add_generation_prompt = true;
  std::string bos_token, eos_token;
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // e.g. enable_thinking
  std::time_t now = 0;                                              // strftime_now's time (0: now)
};

// Renders the inputs with a template text or built-in name. Throws es::Error for syntax errors,
// the template's raise_exception() and runtime errors, naming the line and column.
std::string RenderChat(const std::string& tmpl_or_name, const ChatInputs& in);

// Plain role/content messages. add_assistant_prompt is the templates' add_generation_prompt;
// bos_text / eos_text are the vocabulary's BOS/EOS texts (built-ins use "<s>" / "</s>" when
// empty).
// `extra` holds more template variables (e.g. {"enable_thinking": false}).
std::string ApplyChatTemplate(
    const std::string& tmpl_or_name, const std::vector<ChatMessage>& msgs,
    bool add_assistant_prompt, const std::string& bos_text, const std::string& eos_text,
    const nlohmann::ordered_json& extra = nlohmann::ordered_json::object());

// Template variables from "NAME=VALUE" texts (--jinja-var): VALUE is read as JSON (false, 3,
// "x", [1]) and otherwise taken as a plain string. Throws es::Error for a text without '='.
nlohmann::ordered_json ParseJinjaVars(const std::vector<std::string>& vars);

}  // namespace es::tok
