// Built-in chat templates (small Jinja texts named by --chat-template NAME), family names detected
// from template text, rendering of Jinja text, and the unknown-name error. The built-ins' expected
// strings follow llama.cpp's (b4748) llama_chat_apply_template output.
#include <gtest/gtest.h>

#include <algorithm>

#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_chat.h"

namespace {

using es::tok::ApplyChatTemplate;
using es::tok::ChatMessage;
using es::tok::ChatTemplateName;

// A conversation with a system prompt, two full turns (one reply padded with spaces, which some
// forms trim) and an open user turn.
const std::vector<ChatMessage>& Conversation() {
  static const std::vector<ChatMessage> c = {
      {"system", "Be brief."},     {"user", "Hi"},
      {"assistant", "Hello!"},     {"user", "Who are you?"},
      {"assistant", "  A bot.  "}, {"user", "Bye"},
  };
  return c;
}

std::string Render(const std::string& t, bool add_ass = true) {
  return ApplyChatTemplate(t, Conversation(), add_ass, "<s>", "</s>");
}

TEST(ChatTemplate, ChatMl) {
  const std::string want =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
      "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n"
      "<|im_start|>assistant\n  A bot.  <|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
      "<|im_start|>assistant\n";
  EXPECT_EQ(Render("chatml"), want);
  EXPECT_EQ(Render("chatml", false),
            want.substr(0, want.size() - std::string("<|im_start|>assistant\n").size()));
  const std::string jinja =
      "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
      "'<|im_end|>\\n'}}"
      "{% endfor %}";
  EXPECT_EQ(ChatTemplateName(jinja), "chatml");
  // Jinja text renders as written: this one has no generation prompt.
  EXPECT_EQ(Render(jinja), Render("chatml", false));
}

TEST(ChatTemplate, Llama2Variants) {
  // Without <<SYS>> support the system text leads the first instruction.
  EXPECT_EQ(Render("llama2"),
            "[INST] Be brief.\nHi [/INST]Hello!</s>[INST] Who are you? [/INST]  A bot.  </s>[INST] "
            "Bye [/INST]");
  const std::string sys =
      "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + content }}{% endif %}[INST]";
  EXPECT_EQ(ChatTemplateName(sys), "llama2-sys");
  EXPECT_EQ(Render("llama2-sys"),
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]Hello!</s>[INST] Who are you? "
            "[/INST]  A bot.  "
            "</s>[INST] Bye [/INST]");
  EXPECT_EQ(ChatTemplateName(sys + "{{ bos_token + '[INST] ' }}"), "llama2-sys-bos");
  EXPECT_EQ(Render("llama2-sys-bos"),
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]Hello!</s><s>[INST] Who are you? "
            "[/INST]  A bot.  "
            "</s><s>[INST] Bye [/INST]");
  EXPECT_EQ(ChatTemplateName(sys + "{{ content.strip() }}"), "llama2-sys-strip");
  EXPECT_EQ(Render("llama2-sys-strip"),
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]Hello!</s>[INST] Who are you? "
            "[/INST]A bot.</s>"
            "[INST] Bye [/INST]");
  // The vocabulary's EOS/BOS texts are used where the form puts them.
  EXPECT_EQ(ApplyChatTemplate("llama2-sys-bos", {{"user", "a"}, {"assistant", "b"}, {"user", "c"}},
                              true, "<BOS>", "<EOS>"),
            "[INST] a [/INST]b<EOS><BOS>[INST] c [/INST]");
}

TEST(ChatTemplate, Llama3) {
  const std::string want =
      "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nA bot.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n";
  EXPECT_EQ(Render("llama3"), want);
  EXPECT_EQ(
      ChatTemplateName("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"),
      "llama3");
}

TEST(ChatTemplate, MistralForms) {
  // "mistral" is the Mistral-7B-Instruct v0.1/v0.2 form, which is llama2's (as in llama.cpp).
  EXPECT_EQ(Render("mistral"), Render("llama2"));
  EXPECT_EQ(ChatTemplateName(
                "{{ bos_token }}{% if m %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endif %}"),
            "llama2");
  EXPECT_EQ(Render("mistral-v1"),
            " [INST] Be brief.\n\nHi [/INST] Hello!</s> [INST] Who are you? [/INST]   A bot.  </s> "
            "[INST] Bye [/INST]");
  EXPECT_EQ(Render("mistral-v3"),
            "[INST] Be brief.\n\nHi[/INST] Hello!</s>[INST] Who are you?[/INST] A bot.</s>[INST] "
            "Bye[/INST]");
  EXPECT_EQ(Render("mistral-v3-tekken"),
            "[INST]Be brief.\n\nHi[/INST]Hello!</s>[INST]Who are you?[/INST]  A bot.  "
            "</s>[INST]Bye[/INST]");
  EXPECT_EQ(Render("mistral-v7"),
            "[SYSTEM_PROMPT] Be brief.[/SYSTEM_PROMPT][INST] Hi[/INST] Hello!</s>[INST] Who are "
            "you?[/INST]   A bot.  "
            "</s>[INST] Bye[/INST]");
  EXPECT_EQ(ChatTemplateName("{{ '[SYSTEM_PROMPT]' }}[INST]"), "mistral-v7");
  EXPECT_EQ(ChatTemplateName("{{ ' [INST] ' + system_message }}"), "mistral-v1");
  EXPECT_EQ(ChatTemplateName("[AVAILABLE_TOOLS]{{ '[INST] ' }}"), "mistral-v3");
  EXPECT_EQ(ChatTemplateName("[AVAILABLE_TOOLS]{{ \"[INST]\" }}"), "mistral-v3-tekken");
}

TEST(ChatTemplate, ZephyrPhi3GemmaFalcon3) {
  EXPECT_EQ(Render("zephyr"),
            "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\nWho "
            "are you?</s>\n"
            "<|assistant|>\n  A bot.  </s>\n<|user|>\nBye</s>\n<|assistant|>\n");
  EXPECT_EQ(
      ChatTemplateName("{{ '<|user|>\\n' + message['content'] + eos_token }}{{ '<|assistant|>' }}"),
      "zephyr");
  EXPECT_EQ(ChatTemplateName("{{ '<|user|>\\n' + message['content'] + '<|endoftext|>' }}"),
            "zephyr");
  // With the vocabulary's own EOS text (e.g. StableLM's).
  EXPECT_EQ(ApplyChatTemplate("zephyr", {{"user", "x"}}, true, "", "<|endoftext|>"),
            "<|user|>\nx<|endoftext|>\n<|assistant|>\n");
  EXPECT_EQ(Render("phi3"),
            "<|system|>\nBe "
            "brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nWho are "
            "you?<|end|>\n<|assistant|>\n  A bot.  <|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\n");
  EXPECT_EQ(ChatTemplateName("{{'<|' + message['role'] + '|>'}}<|assistant|><|end|>"), "phi3");
  EXPECT_EQ(
      Render("gemma"),
      "<start_of_turn>user\nBe "
      "brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
      "<start_of_turn>user\nWho are you?<end_of_turn>\n<start_of_turn>model\nA bot.<end_of_turn>\n"
      "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(ChatTemplateName("{{ '<start_of_turn>' + role + '\\n' }}"), "gemma");
  EXPECT_EQ(ChatTemplateName("<|user|>{{ x }}<|assistant|>{{ '</s>' }}"), "falcon3");
  EXPECT_EQ(ApplyChatTemplate("falcon3", {{"user", "x"}}, true, "", ""),
            "<|user|>\nx\n<|assistant|>\n");
}

TEST(ChatTemplate, JinjaTextRendersAsWritten) {
  EXPECT_EQ(Render("{% for m in messages %}{{ m.content }}|{% endfor %}"),
            "Be brief.|Hi|Hello!|Who are you?|  A bot.  |Bye|");
  EXPECT_EQ(ChatTemplateName("{{ messages[0].content }}"), "jinja");
}

TEST(ChatTemplate, UnknownNameListsTheBuiltIns) {
  for (const char* bad : {"llama-7", ""}) {
    try {
      Render(bad);
      FAIL() << "expected es::Error for '" << bad << "'";
    } catch (const es::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("--chat-template NAME"), std::string::npos) << msg;
      for (const char* n : {"chatml", "llama2", "llama3", "mistral", "zephyr"})
        EXPECT_NE(msg.find(n), std::string::npos) << n << " missing from: " << msg;
    }
  }
}

// Errors in a template name the line and column, and the template's own raise_exception text.
TEST(ChatTemplate, TemplateErrorsNameThePlace) {
  try {
    Render("line one\n{% if messages %}{{ messages | no_such_filter }}{% endif %}");
    FAIL() << "expected es::Error";
  } catch (const es::Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2 column"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no_such_filter"), std::string::npos) << e.what();
  }
  try {
    Render(
        "{% if messages[0].role == 'system' %}{{ raise_exception('No system role!') }}{% endif %}");
    FAIL() << "expected es::Error";
  } catch (const es::Error& e) {
    EXPECT_NE(std::string(e.what()).find("No system role!"), std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, EveryNameRenders) {
  for (const auto& n : es::tok::ChatTemplateNames()) {
    EXPECT_EQ(ChatTemplateName(n), n);
    EXPECT_NE(Render(n).find("Bye"), std::string::npos) << n;
  }
}

// The rendered prompt's control texts become single tokens when parsed as specials.
TEST(ChatTemplate, RenderedPromptTokenizesSpecials) {
  auto f = es::gguf::File::Open(es::test::ModelPath("vocab/ggml-vocab-llama-spm.gguf"));
  auto tk = es::tok::Tokenizer::FromGGUF(*f);
  const std::string p =
      ApplyChatTemplate("llama2", {{"user", "Hi"}, {"assistant", "Yo"}, {"user", "Ok"}}, true,
                        tk->TokenText(tk->bos()), tk->TokenText(tk->eos()));
  EXPECT_EQ(p, "[INST] Hi [/INST]Yo</s>[INST] Ok [/INST]");
  const auto ids = tk->Encode(p, true, true);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tk->eos()), 1);
  EXPECT_EQ(ids.front(), tk->bos());
}

}  // namespace
