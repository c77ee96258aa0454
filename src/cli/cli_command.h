// Each subcommand lives in its own cli_<name>.cpp and registers itself here at start-up.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace es::cli {

// Exit codes shared by all subcommands.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;  // the input (model, file, request) was bad or an operation failed
constexpr int kExitUsage = 2;    // bad arguments

// Adds a subcommand to `app`; the returned callback runs it after parsing and returns the exit
// code.
using SetupFn = std::function<std::function<int()>(CLI::App& app)>;

// Registers a subcommand; call from a namespace-scope initializer in the command's file.
bool RegisterCommand(const std::string& name, SetupFn setup);

// `edgeshard --list-devices` (cli_devices.cpp): prints the CPU and the Vulkan devices.
int ListDevices();

// Thrown by commands for argument errors found after parsing (prints usage, exit 2).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace es::cli
