#ifndef OFFSITE_CLIENT_SPEC_BUILDER_H_
#define OFFSITE_CLIENT_SPEC_BUILDER_H_

// Builds a JobSpec from the command line through protobuf reflection, so
// every job kind gets the same CLI without code of its own:
//   offsite jobs submit forward_forward --set epochs=5 --set layer_widths=500,500
// KIND is the JobSpec oneof field name ('-' may stand for '_'); a --spec FILE
// holds the kind's message in text format, and --set values override it.
// Nested fields are reached with dots, repeated fields take comma lists.
// `resources.*` sets what the job asks of its workers (JobSpec.resources),
// e.g. --set resources.workers=2 for a data-parallel run.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "google/protobuf/message.h"
#include "offsite/v1/job.pb.h"

namespace offsite {

// The job kinds this client knows, e.g. {"forward_forward"}.
std::vector<std::string> JobKinds();

absl::StatusOr<v1::JobSpec> BuildJobSpec(const std::string& kind, const std::string& spec_file,
                                         const std::vector<std::string>& assignments);

// Sets one `path=value` on `message`; errors name the field and list the
// valid ones.
absl::Status SetField(google::protobuf::Message* message, const std::string& assignment);

}  // namespace offsite

#endif  // OFFSITE_CLIENT_SPEC_BUILDER_H_
