#ifndef OFFSITE_CLIENT_OFFSITE_COMMANDS_H_
#define OFFSITE_CLIENT_OFFSITE_COMMANDS_H_

// The `offsite` CLI's Offsite-Tuning groups. Each takes the words after the
// group name and returns a process exit code (client/cli_args.h).
//
//   offsite models add NAME (--artifact ID | --file PATH) [--description TEXT]
//   offsite models list
//   offsite packages list | get ID | grant ID PRINCIPAL | revoke ID PRINCIPAL
//   offsite offsite pull PACKAGE -o DIR      download + verify the package into DIR
//   offsite offsite tune DIR --data PATH ... tune the adapter locally (no network)
//   offsite offsite push DIR [--watch]       upload the adapter, queue its plug-in evaluation
//   offsite offsite adapters [--package ID]

#include <string>
#include <vector>

namespace offsite {

int RunModelsCommand(const std::vector<std::string>& words);
int RunPackagesCommand(const std::vector<std::string>& words);
int RunOffsiteCommand(const std::vector<std::string>& words);
// The usage lines of the three groups, for Usage().
std::string OffsiteUsage();

}  // namespace offsite

#endif  // OFFSITE_CLIENT_OFFSITE_COMMANDS_H_
