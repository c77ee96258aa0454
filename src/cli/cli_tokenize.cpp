// `edgeshard tokenize`: prints how a model's vocabulary tokenizes a prompt. Only the GGUF metadata
// is read (no weights), so vocabulary-only files work too.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "cli/cli_command.h"
#include "edgeshard/error.h"
#include "gguf/gguf_file.h"
#include "tokenizer/tokenizer.h"

namespace es::cli {
namespace {

struct TokenizeOptions {
  std::string model;
  std::string prompt;
  bool has_prompt = false;  // -p given, even if empty
  std::string file;
  bool from_stdin = false;
  bool ids = false;
  bool no_bos = false;
  bool no_parse_special = false;
  bool show_count = false;
};

int Tokenize(const TokenizeOptions& o) {
  const int sources = o.has_prompt + !o.file.empty() + o.from_stdin;
  if (sources == 0) throw UsageError("a prompt is required: give -p TEXT, -f FILE or --stdin");
  if (sources > 1) throw UsageError("give only one of -p, -f and --stdin");
  std::string text = o.prompt;
  if (!o.file.empty()) {
    std::ifstream in(o.file, std::ios::binary);
    if (!in) throw Error(o.file + ": cannot open the prompt file");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } else if (o.from_stdin) {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    text = ss.str();
  }

  const auto file = gguf::File::Open(o.model);
  const auto tk = tok::Tokenizer::FromGGUF(*file);
  const auto ids = tk->Encode(text, !o.no_bos, !o.no_parse_special);

  std::string out;
  if (o.ids) {
    out += "[";
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
    out += "]\n";
  } else {
    for (int32_t id : ids) out += std::to_string(id) + " -> '" + tk->TokenToPiece(id, true) + "'\n";
  }
  if (o.show_count) out += "Total number of tokens: " + std::to_string(ids.size()) + "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return kExitOk;
}

std::function<int()> Setup(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* sub =
      app.add_subcommand("tokenize", "Show how the model's vocabulary tokenizes a text");
  sub->add_option("-m,--model", o->model, "GGUF file (a vocabulary-only file is enough)")
      ->required()
      ->check(CLI::ExistingFile);
  CLI::Option* prompt = sub->add_option("-p,--prompt", o->prompt, "text to tokenize");
  sub->add_option("-f,--file", o->file, "read the text from a file");
  sub->add_flag("--stdin", o->from_stdin, "read the text from standard input");
  sub->add_flag("--ids", o->ids, "print only the ids, as a list like [1, 2, 3]");
  sub->add_flag("--no-bos", o->no_bos, "do not add BOS/EOS even if the vocabulary asks for them");
  sub->add_flag("--no-parse-special", o->no_parse_special,
                "treat control-token texts such as <|im_start|> as plain text");
  sub->add_flag("--show-count", o->show_count, "print the number of tokens at the end");
  return [o, prompt] {
    o->has_prompt = prompt->count() > 0;
    return Tokenize(*o);
  };
}

const bool registered = RegisterCommand("tokenize", Setup);

}  // namespace
}  // namespace es::cli
