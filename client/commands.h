#ifndef OFFSITE_CLIENT_COMMANDS_H_
#define OFFSITE_CLIENT_COMMANDS_H_

// The `offsite` CLI's command groups. Each takes the words after the group
// name and returns a process exit code (client/cli_args.h).

#include <string>
#include <vector>

namespace offsite {

int RunJobsCommand(const std::vector<std::string>& words);
int RunArtifactsCommand(const std::vector<std::string>& words);
int RunCertsCommand(const std::vector<std::string>& words);
// Full usage text.
std::string Usage();

}  // namespace offsite

#endif  // OFFSITE_CLIENT_COMMANDS_H_
