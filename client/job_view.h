#ifndef OFFSITE_CLIENT_JOB_VIEW_H_
#define OFFSITE_CLIENT_JOB_VIEW_H_

// Human-readable rendering of jobs and their events: one-line summaries,
// detail views and the live progress bar.

#include <string>

#include "offsite/v1/job.pb.h"

namespace offsite {

// "job-...  forward_forward  RUNNING  owner  2026-11-27 20:01:02  epoch 3/10 42%"
std::string JobSummaryLine(const v1::Job& job);
// Multi-line details, metrics included.
std::string JobDetails(const v1::Job& job);
// "[#########...........]  45%  epoch 3/10  loss=0.1234 test_accuracy=0.8712"
std::string ProgressBar(const v1::Progress& progress,
                        const google::protobuf::Map<std::string, double>& metrics, int width);
// One line for an event in a non-interactive stream (log, state, metrics).
std::string EventLine(const v1::JobEvent& event);

}  // namespace offsite

#endif  // OFFSITE_CLIENT_JOB_VIEW_H_
