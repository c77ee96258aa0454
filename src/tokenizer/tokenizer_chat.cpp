#include "tokenizer/tokenizer_chat.h"

#include <algorithm>
#include <cctype>

#include "edgeshard/error.h"

namespace es::tok {

namespace {

std::string Trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string SupportedList() {
  std::string s;
  for (const auto& n : ChatTemplateNames()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// Recognises a template by marker strings, in llama.cpp's order (first match wins).
std::string Detect(const std::string& t) {
  const auto has = [&](const char* s) { return t.find(s) != std::string::npos; };
  if (has("<|im_start|>")) return has("<|im_sep|>") ? "" : "chatml";  // phi4 is not supported
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
  // Zephyr-style turns end in the EOS token, spelled out or through the eos_token variable.
  if (has("<|user|>") && (has("<|endoftext|>") || has("</s>") || has("eos_token"))) return "zephyr";
  if (has("<start_of_turn>")) return "gemma";
  if (has("<|start_header_id|>") && has("<|end_header_id|>")) return "llama3";
  return "";
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
  const auto& names = ChatTemplateNames();
  if (std::find(names.begin(), names.end(), tmpl_or_name) != names.end()) return tmpl_or_name;
  std::string name = Detect(tmpl_or_name);
  if (name.empty()) {
    std::string head = tmpl_or_name.substr(0, 60);
    std::replace(head.begin(), head.end(), '\n', ' ');
    throw Error("unsupported chat template '" + head + (tmpl_or_name.size() > 60 ? "...'" : "'") +
                ": supported forms are " + SupportedList() +
                "; pass --chat-template NAME to use one of them");
  }
  return name;
}

std::string ApplyChatTemplate(const std::string& tmpl_or_name, const std::vector<ChatMessage>& msgs,
                              bool add_assistant_prompt, const std::string& bos_text,
                              const std::string& eos_text) {
  const std::string form = ChatTemplateName(tmpl_or_name);
  const std::string bos = bos_text.empty() ? "<s>" : bos_text;
  const std::string eos = eos_text.empty() ? "</s>" : eos_text;
  std::string out;
  if (form == "chatml") {
    for (const auto& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (add_assistant_prompt) out += "<|im_start|>assistant\n";
  } else if (form == "llama3") {
    for (const auto& m : msgs)
      out +=
          "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + Trim(m.content) + "<|eot_id|>";
    if (add_assistant_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  } else if (form == "mistral-v7") {
    for (const auto& m : msgs) {
      if (m.role == "system") {
        out += "[SYSTEM_PROMPT] " + m.content + "[/SYSTEM_PROMPT]";
      } else if (m.role == "user") {
        out += "[INST] " + m.content + "[/INST]";
      } else {
        out += " " + m.content + eos;
      }
    }
  } else if (form == "mistral-v1" || form == "mistral-v3" || form == "mistral-v3-tekken") {
    const std::string lead = form == "mistral-v1" ? " " : "";
    const std::string trail = form == "mistral-v3-tekken" ? "" : " ";
    const bool trim_reply = form == "mistral-v3";
    bool in_turn = false;
    for (const auto& m : msgs) {
      if (!in_turn) {
        out += lead + "[INST]" + trail;
        in_turn = true;
      }
      if (m.role == "system") {
        out += m.content + "\n\n";
      } else if (m.role == "user") {
        out += m.content + lead + "[/INST]";
      } else {
        out += trail + (trim_reply ? Trim(m.content) : m.content) + eos;
        in_turn = false;
      }
    }
  } else if (form.rfind("llama2", 0) == 0 || form == "mistral") {
    const bool sys = form != "llama2" && form != "mistral";
    const bool bos_in_history = form == "llama2-sys-bos";
    const bool strip = form == "llama2-sys-strip";
    bool in_turn = true;  // the first [INST] follows the BOS the tokenizer adds
    out += "[INST] ";
    for (const auto& m : msgs) {
      const std::string content = strip ? Trim(m.content) : m.content;
      if (!in_turn) {
        in_turn = true;
        out += bos_in_history ? bos + "[INST] " : "[INST] ";
      }
      if (m.role == "system") {
        // Without <<SYS>> support the system text still leads the first instruction.
        out += sys ? "<<SYS>>\n" + content + "\n<</SYS>>\n\n" : content + "\n";
      } else if (m.role == "user") {
        out += content + " [/INST]";
      } else {
        out += content + eos;
        in_turn = false;
      }
    }
  } else if (form == "zephyr") {
    for (const auto& m : msgs) out += "<|" + m.role + "|>\n" + m.content + eos + "\n";
    if (add_assistant_prompt) out += "<|assistant|>\n";
  } else if (form == "falcon3") {
    for (const auto& m : msgs) out += "<|" + m.role + "|>\n" + m.content + "\n";
    if (add_assistant_prompt) out += "<|assistant|>\n";
  } else if (form == "phi3") {
    for (const auto& m : msgs) out += "<|" + m.role + "|>\n" + m.content + "<|end|>\n";
    if (add_assistant_prompt) out += "<|assistant|>\n";
  } else if (form == "gemma") {
    // Gemma has no system role: the system text is folded into the next user turn.
    std::string system;
    for (const auto& m : msgs) {
      if (m.role == "system") {
        system += Trim(m.content);
        continue;
      }
      const std::string role = m.role == "assistant" ? "model" : m.role;
      out += "<start_of_turn>" + role + "\n";
      if (!system.empty() && role != "model") {
        out += system + "\n\n";
        system.clear();
      }
      out += Trim(m.content) + "<end_of_turn>\n";
    }
    if (add_assistant_prompt) out += "<start_of_turn>model\n";
  }
  return out;
}

}  // namespace es::tok
