#ifndef OFFSITE_SERVER_JOB_SERVICE_H_
#define OFFSITE_SERVER_JOB_SERVICE_H_

// gRPC adapter over JobManager: decode, call, encode. No logic lives here.

#include "offsite/v1/job.grpc.pb.h"
#include "server/job_manager.h"
#include "server/rpc_handler.h"

namespace offsite {

class JobServiceImpl final : public v1::JobService::Service {
 public:
  JobServiceImpl(JobManager* manager, RpcEnvironment env) : manager_(manager), env_(env) {}

  grpc::Status SubmitJob(grpc::ServerContext* context, const v1::JobSpec* request,
                         v1::Job* response) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::Job* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override;
  grpc::Status GetJobLogs(grpc::ServerContext* context, const v1::GetJobLogsRequest* request,
                          v1::GetJobLogsResponse* response) override;

 private:
  JobManager* manager_;
  RpcEnvironment env_;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_JOB_SERVICE_H_
