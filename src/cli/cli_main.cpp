// The `edgeshard` binary: dispatches to the registered subcommands.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "cli/cli_command.h"
#include "edgeshard/error.h"

namespace es::cli {

static std::map<std::string, SetupFn>& Registry() {
  static std::map<std::string, SetupFn> r;
  return r;
}

bool RegisterCommand(const std::string& name, SetupFn setup) {
  Registry().emplace(name, std::move(setup));
  return true;
}

}  // namespace es::cli

int main(int argc, char** argv) {
  using namespace es::cli;
  CLI::App app{"edgeshard: LLM inference on edge devices, alone or sharded across several"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "edgeshard 0.1.0");
  // Answered before parsing: it needs no subcommand.
  app.add_flag("--list-devices")
      ->description("List the devices --device can name (cpu, vulkanN) and exit");
  if (argc == 2 && std::string(argv[1]) == "--list-devices") return ListDevices();
  std::map<CLI::App*, std::function<int()>> runners;
  for (auto& [name, setup] : Registry()) {
    (void)name;
    auto run = setup(app);
    runners[app.get_subcommands({}).back()] = std::move(run);
  }
  // llama.cpp's multi-letter short options, which CLI11 cannot declare: spelled out.
  const std::map<std::string, std::string> aliases = {
      {"-ctk", "--cache-type-k"}, {"-ctv", "--cache-type-v"}, {"-ngl", "--gpu-layers"}};
  std::vector<std::string> args;
  for (int i = argc - 1; i > 0; --i) {  // CLI11 takes the arguments in reverse order
    const auto a = aliases.find(argv[i]);
    args.push_back(a == aliases.end() ? argv[i] : a->second);
  }
  try {
    app.parse(std::move(args));
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "edgeshard: %s\n", e.what());
    std::string usage = app.get_subcommands().empty() ? app.help("", CLI::AppFormatMode::Normal)
                                                      : app.get_subcommands()[0]->help();
    std::fprintf(stderr, "%s", usage.c_str());
    return kExitUsage;
  }
  CLI::App* sub = app.get_subcommands()[0];
  try {
    return runners.at(sub)();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "edgeshard %s: %s\n%s", sub->get_name().c_str(), e.what(),
                 sub->help().c_str());
    return kExitUsage;
  } catch (const es::Error& e) {
    std::fprintf(stderr, "edgeshard %s: error: %s\n", sub->get_name().c_str(), e.what());
    return kExitFailure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edgeshard %s: internal error: %s\n", sub->get_name().c_str(), e.what());
    return kExitFailure;
  }
}
