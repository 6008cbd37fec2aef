// offsite: the client CLI. Dispatches to the command groups in commands.cc.

#include <iostream>
#include <string>
#include <vector>

#include "client/cli_args.h"
#include "client/commands.h"
#include "client/offsite_commands.h"

int main(int argc, char** argv) {
  std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty() || words[0] == "help" || words[0] == "--help" || words[0] == "-h") {
    std::cout << offsite::Usage();
    return words.empty() ? offsite::kExitUsage : offsite::kExitOk;
  }
  const std::string group = words[0];
  words.erase(words.begin());
  if (group == "jobs") return offsite::RunJobsCommand(words);
  if (group == "artifacts") return offsite::RunArtifactsCommand(words);
  if (group == "certs") return offsite::RunCertsCommand(words);
  if (group == "models") return offsite::RunModelsCommand(words);
  if (group == "packages") return offsite::RunPackagesCommand(words);
  if (group == "offsite") return offsite::RunOffsiteCommand(words);
  std::cerr << "offsite: unknown command \"" << group << "\"\n\n" << offsite::Usage();
  return offsite::kExitUsage;
}
