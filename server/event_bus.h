#ifndef OFFSITE_SERVER_EVENT_BUS_H_
#define OFFSITE_SERVER_EVENT_BUS_H_

// Wakes watchers when any job event is written. Watchers re-read the store,
// which stays the single source of truth; the bus only says "look again".

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace offsite {

class EventBus {
 public:
  uint64_t version() {
    std::lock_guard<std::mutex> lock(mu_);
    return version_;
  }
  void Publish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++version_;
    }
    cv_.notify_all();
  }
  // Returns once version() != seen or the timeout passed.
  void WaitForChange(uint64_t seen, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return version_ != seen; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t version_ = 0;
};

}  // namespace offsite

#endif  // OFFSITE_SERVER_EVENT_BUS_H_
