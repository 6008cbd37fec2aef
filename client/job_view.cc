#include "client/job_view.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"

namespace offsite {
namespace {

std::string FormatTimeMs(int64_t ms) {
  if (ms == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(ms), absl::LocalTimeZone());
}

// Sorted, so lines are stable between refreshes.
std::string MetricsText(const google::protobuf::Map<std::string, double>& metrics) {
  std::map<std::string, double> sorted(metrics.begin(), metrics.end());
  std::string text;
  for (const auto& [name, value] : sorted) {
    absl::StrAppend(&text, text.empty() ? "" : " ", name, "=", absl::StrFormat("%.4g", value));
  }
  return text;
}

int Percent(const v1::Progress& progress) {
  if (progress.total_steps() <= 0) return 0;
  return static_cast<int>(100 * progress.step() / progress.total_steps());
}

}  // namespace

std::string JobSummaryLine(const v1::Job& job) {
  std::string progress;
  if (job.state() == v1::RUNNING && job.progress().total_steps() > 0) {
    progress = absl::StrCat(job.progress().phase(), " ", Percent(job.progress()), "%");
  }
  return absl::StrFormat("%-22s %-16s %-9s %-12s %s  %s", job.id(), job.kind(),
                         v1::JobState_Name(job.state()), job.owner(),
                         FormatTimeMs(job.create_time_ms()), progress);
}

std::string JobDetails(const v1::Job& job) {
  std::string text = absl::StrCat("id:        ", job.id(), "\nkind:      ", job.kind(),
                                  "\nstate:     ", v1::JobState_Name(job.state()),
                                  "\nowner:     ", job.owner(),
                                  "\ncreated:   ", FormatTimeMs(job.create_time_ms()),
                                  "\nstarted:   ", FormatTimeMs(job.start_time_ms()),
                                  "\nended:     ", FormatTimeMs(job.end_time_ms()),
                                  "\nattempts:  ", job.attempts(), "\n");
  if (!job.spec().display_name().empty()) {
    absl::StrAppend(&text, "name:      ", job.spec().display_name(), "\n");
  }
  if (job.progress().total_steps() > 0) {
    absl::StrAppend(&text, "progress:  ", job.progress().phase(), " (step ", job.progress().step(),
                    "/", job.progress().total_steps(), ")\n");
  }
  if (!job.metrics().empty()) absl::StrAppend(&text, "metrics:   ", MetricsText(job.metrics()), "\n");
  if (!job.error().empty()) absl::StrAppend(&text, "error:     ", job.error(), "\n");
  for (const std::string& id : job.artifact_ids()) absl::StrAppend(&text, "artifact:  ", id, "\n");
  return text;
}

std::string ProgressBar(const v1::Progress& progress,
                        const google::protobuf::Map<std::string, double>& metrics, int width) {
  const int percent = Percent(progress);
  const int filled = width * percent / 100;
  return absl::StrCat("[", std::string(filled, '#'), std::string(width - filled, '.'), "] ",
                      absl::StrFormat("%3d%%", percent), "  ", progress.phase(), "  ",
                      MetricsText(metrics));
}

std::string EventLine(const v1::JobEvent& event) {
  switch (event.event_case()) {
    case v1::JobEvent::kState:
      return absl::StrCat("state ", v1::JobState_Name(event.state().state()),
                          event.state().message().empty() ? "" : ": ", event.state().message());
    case v1::JobEvent::kLog:
      return event.log().text();
    case v1::JobEvent::kMetrics:
      return absl::StrCat("metrics step ", event.metrics().step(), ": ",
                          MetricsText(event.metrics().values()));
    case v1::JobEvent::kArtifact:
      return absl::StrCat("artifact ", event.artifact().artifact_id(), " (",
                          event.artifact().name(), ")");
    case v1::JobEvent::kProgress:
      return absl::StrCat("progress ", event.progress().phase(), " ", event.progress().step(), "/",
                          event.progress().total_steps());
    case v1::JobEvent::EVENT_NOT_SET:
      break;
  }
  return "";
}

}  // namespace offsite
