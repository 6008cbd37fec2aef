#include "server/job_service.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

std::string JobResource(const std::string& id) { return absl::StrCat("job/", id); }

}  // namespace

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* context, const v1::JobSpec* request,
                                       v1::Job* response) {
  return HandleRpc(env_, context, "SubmitJob", "job/new", [&](const Caller& caller) {
    return AssignResponse(manager_->Submit(caller, *request), response);
  });
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                                    v1::Job* response) {
  return HandleRpc(env_, context, "GetJob", JobResource(request->id()), [&](const Caller& caller) {
    return AssignResponse(manager_->Get(caller, request->id()), response);
  });
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* context,
                                      const v1::ListJobsRequest* request,
                                      v1::ListJobsResponse* response) {
  return HandleRpc(env_, context, "ListJobs", "jobs", [&](const Caller& caller) {
    return AssignResponse(manager_->List(caller, *request), response);
  });
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* context,
                                       const v1::CancelJobRequest* request, v1::Job* response) {
  return HandleRpc(env_, context, "CancelJob", JobResource(request->id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->Cancel(caller, request->id()), response);
                   });
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* context,
                                      const v1::WatchJobRequest* request,
                                      grpc::ServerWriter<v1::JobEvent>* writer) {
  return HandleRpc(
      env_, context, "WatchJob", JobResource(request->id()), [&](const Caller& caller) {
        return manager_->Watch(
            caller, request->id(), request->after_seq(),
            [&](const v1::JobEvent& event) { return writer->Write(event); },
            [&] { return context->IsCancelled(); });
      });
}

grpc::Status JobServiceImpl::GetJobLogs(grpc::ServerContext* context,
                                        const v1::GetJobLogsRequest* request,
                                        v1::GetJobLogsResponse* response) {
  return HandleRpc(env_, context, "GetJobLogs", JobResource(request->id()),
                   [&](const Caller& caller) {
                     return AssignResponse(manager_->Logs(caller, *request), response);
                   });
}

}  // namespace offsite
