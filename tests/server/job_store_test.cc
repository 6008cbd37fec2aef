#include "server/job_store.h"

#include "gtest/gtest.h"
#include "server/database.h"
#include "tests/server/test_dir.h"

namespace offsite {
namespace {

v1::Job MakeJob(const std::string& id, const std::string& owner, int64_t created) {
  v1::Job job;
  job.set_id(id);
  job.set_owner(owner);
  job.set_kind("forward_forward");
  job.mutable_spec()->mutable_forward_forward()->set_epochs(1);
  job.set_state(v1::QUEUED);
  job.set_create_time_ms(created);
  return job;
}

v1::JobEvent Log(const std::string& text) {
  v1::JobEvent event;
  event.mutable_log()->set_text(text);
  return event;
}

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void Open() {
    store_.reset();
    db_.reset();
    db_ = Database::Open(dir_ + "/offsite.db").value();
    store_ = JobStore::Create(db_.get()).value();
  }
  std::string dir_ = MakeTestDir();
  std::unique_ptr<Database> db_;
  std::unique_ptr<JobStore> store_;
};

TEST_F(JobStoreTest, InsertedJobReadsBackWithFirstEvent) {
  ASSERT_TRUE(store_->Insert(MakeJob("job-1", "alice", 10), Log("hello")).ok());
  absl::StatusOr<v1::Job> job = store_->Get("job-1");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->owner(), "alice");
  EXPECT_EQ(job->spec().forward_forward().epochs(), 1);
  auto events = store_->Events("job-1", 0, 0, false).value();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].seq(), 1);
  EXPECT_EQ(events[0].log().text(), "hello");
  EXPECT_TRUE(absl::IsNotFound(store_->Get("job-2").status()));
}

TEST_F(JobStoreTest, EventsGetConsecutiveSequenceNumbersAndResumeAfterAny) {
  ASSERT_TRUE(store_->Insert(MakeJob("job-1", "alice", 10), Log("0")).ok());
  for (int i = 1; i <= 5; ++i) {
    auto event = store_->Update(
        "job-1", [](v1::Job&) { return absl::OkStatus(); }, Log(std::to_string(i)));
    ASSERT_TRUE(event.ok());
    EXPECT_EQ(event->seq(), i + 1);
  }
  auto after = store_->Events("job-1", 3, 0, false).value();
  ASSERT_EQ(after.size(), 3u);
  EXPECT_EQ(after[0].seq(), 4);
  EXPECT_EQ(after[2].seq(), 6);
  EXPECT_EQ(store_->Events("job-1", 0, 2, false).value().size(), 2u);
}

TEST_F(JobStoreTest, FailedMutationWritesNothing) {
  ASSERT_TRUE(store_->Insert(MakeJob("job-1", "alice", 10), Log("0")).ok());
  auto result = store_->Update(
      "job-1",
      [](v1::Job& job) {
        job.set_state(v1::FAILED);
        return absl::FailedPreconditionError("no");
      },
      Log("never"));
  EXPECT_TRUE(absl::IsFailedPrecondition(result.status()));
  EXPECT_EQ(store_->Get("job-1")->state(), v1::QUEUED);
  EXPECT_EQ(store_->Events("job-1", 0, 0, false)->size(), 1u);
}

TEST_F(JobStoreTest, ListIsNewestFirstFilteredAndPaginated) {
  for (int i = 0; i < 7; ++i) {
    ASSERT_TRUE(store_->Insert(MakeJob("job-" + std::to_string(i), i % 2 ? "bob" : "alice", i),
                               Log("x"))
                    .ok());
  }
  JobQuery query;
  query.page_size = 3;
  JobPage first = store_->List(query).value();
  ASSERT_EQ(first.jobs.size(), 3u);
  EXPECT_EQ(first.jobs[0].id(), "job-6");
  ASSERT_FALSE(first.next_page_token.empty());
  query.page_token = first.next_page_token;
  JobPage second = store_->List(query).value();
  EXPECT_EQ(second.jobs[0].id(), "job-3");
  query.page_token = second.next_page_token;
  JobPage last = store_->List(query).value();
  EXPECT_EQ(last.jobs.size(), 1u);
  EXPECT_TRUE(last.next_page_token.empty());

  JobQuery bobs;
  bobs.owner = "bob";
  JobPage page = store_->List(bobs).value();
  EXPECT_EQ(page.jobs.size(), 3u);
  for (const v1::Job& job : page.jobs) EXPECT_EQ(job.owner(), "bob");

  JobQuery running;
  running.state = v1::RUNNING;
  EXPECT_TRUE(store_->List(running)->jobs.empty());
}

TEST_F(JobStoreTest, MalformedPageTokenIsInvalidArgumentNamingIt) {
  JobQuery query;
  query.page_token = "garbage";
  absl::Status status = store_->List(query).status();
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("page_token"), std::string::npos);
}

TEST_F(JobStoreTest, ClaimTakesOldestQueuedJobAndCountsAttempts) {
  ASSERT_TRUE(store_->Insert(MakeJob("job-new", "a", 20), Log("x")).ok());
  ASSERT_TRUE(store_->Insert(MakeJob("job-old", "a", 10), Log("x")).ok());
  auto claimed = store_->ClaimNextQueued(100).value();
  ASSERT_TRUE(claimed.has_value());
  EXPECT_EQ(claimed->id(), "job-old");
  EXPECT_EQ(claimed->state(), v1::RUNNING);
  EXPECT_EQ(claimed->attempts(), 1);
  EXPECT_EQ(store_->Get("job-old")->state(), v1::RUNNING);
  EXPECT_EQ(store_->ClaimNextQueued(100).value()->id(), "job-new");
  EXPECT_FALSE(store_->ClaimNextQueued(100).value().has_value());
}

TEST_F(JobStoreTest, JobsAndEventsSurviveReopen) {
  ASSERT_TRUE(store_->Insert(MakeJob("job-1", "alice", 10), Log("a")).ok());
  ASSERT_TRUE(store_->ClaimNextQueued(5).ok());
  Open();
  EXPECT_EQ(store_->Get("job-1")->state(), v1::RUNNING);
  EXPECT_EQ(store_->IdsInState(v1::RUNNING).value(), std::vector<std::string>{"job-1"});
  EXPECT_EQ(store_->Events("job-1", 0, 0, false)->size(), 2u);
}

TEST_F(JobStoreTest, LogsOnlySelectsLogEvents) {
  ASSERT_TRUE(store_->Insert(MakeJob("job-1", "alice", 10), Log("a")).ok());
  v1::JobEvent state;
  state.mutable_state()->set_state(v1::RUNNING);
  ASSERT_TRUE(store_->Update("job-1", [](v1::Job&) { return absl::OkStatus(); }, state).ok());
  ASSERT_TRUE(store_->Update("job-1", [](v1::Job&) { return absl::OkStatus(); }, Log("b")).ok());
  auto logs = store_->Events("job-1", 0, 0, true).value();
  ASSERT_EQ(logs.size(), 2u);
  EXPECT_EQ(logs[1].log().text(), "b");
  EXPECT_EQ(logs[1].seq(), 3);
}

}  // namespace
}  // namespace offsite
