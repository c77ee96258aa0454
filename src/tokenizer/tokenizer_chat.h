// Chat prompt formatting for the common template families, recognised from a model's
// tokenizer.chat_template text the way llama.cpp (b4748) does; not a Jinja interpreter.
#pragma once
#include <string>
#include <vector>

namespace es::tok {

struct ChatMessage {
  std::string role, content;
};

// Names accepted by ApplyChatTemplate / ChatTemplateName.
const std::vector<std::string>& ChatTemplateNames();

// The canonical name of the form `tmpl_or_name` is (a name from ChatTemplateNames() or the text of
// a Jinja template). Throws es::Error listing the supported forms if it is not recognised.
std::string ChatTemplateName(const std::string& tmpl_or_name);

// Renders `msgs` in the template's form. add_assistant_prompt appends the opening of an assistant
// turn (forms whose prompt already ends in one, like llama2's "[/INST]", ignore it). bos_text /
// eos_text are the vocabulary's BOS/EOS texts, used where a form puts them inside the prompt
// ("<s>" / "</s>" when empty).
// Forms: chatml, llama2 (also llama2-sys, llama2-sys-bos, llama2-sys-strip), llama3, mistral (the
// Mistral-7B-Instruct v0.1/v0.2 form, which is llama2's), mistral-v1, mistral-v3,
// mistral-v3-tekken, mistral-v7, zephyr, phi3, gemma, falcon3.
// Unknown template: es::Error naming the supported forms and the --chat-template NAME override.
std::string ApplyChatTemplate(const std::string& tmpl_or_name, const std::vector<ChatMessage>& msgs,
                              bool add_assistant_prompt, const std::string& bos_text,
                              const std::string& eos_text);

}  // namespace es::tok
