#include <gtest/gtest.h>

#include <atomic>
#include <future>

#include "store/group_commit.hpp"

namespace pliers {

std::vector<append_request> one_event_request() {
  append_request r;
  r.aggregate_id = "a";
  r.events.resize(1);
  return {r};
}

using unit = group_commit::unit_result;

TEST(GroupCommit, BatchesWhatQueuedWhileCommitting) {
  std::promise<void> release;
  auto gate = release.get_future().share();
  std::vector<std::size_t> batch_sizes;
  std::mutex m;
  group_commit gc(
      [&](std::span<group_commit::pending> batch) {
        {
          std::lock_guard lock(m);
          batch_sizes.push_back(batch.size());
        }
        gate.wait();  // hold the first commit so the others queue up
        std::vector<unit> out;
        for (std::size_t i = 0; i < batch.size(); ++i) out.emplace_back(std::vector<append_result>{});
        return out;
      },
      100);
  std::atomic<int> done{0};
  gc.enqueue(one_event_request(), [&](unit) { ++done; });
  while (true) {  // wait until the first commit has started
    std::lock_guard lock(m);
    if (!batch_sizes.empty()) break;
  }
  for (int i = 0; i < 10; ++i) gc.enqueue(one_event_request(), [&](unit) { ++done; });
  release.set_value();
  gc.stop();
  EXPECT_EQ(done.load(), 11);
  ASSERT_EQ(batch_sizes.size(), 2u);
  EXPECT_EQ(batch_sizes[0], 1u);
  EXPECT_EQ(batch_sizes[1], 10u);
}

TEST(GroupCommit, RefusesBeyondTheQueueBoundAndAfterStop) {
  std::promise<void> release;
  auto gate = release.get_future().share();
  std::atomic<bool> started{false};
  group_commit gc(
      [&](std::span<group_commit::pending> batch) {
        started = true;
        gate.wait();
        return std::vector<unit>(batch.size(), unit(std::vector<append_result>{}));
      },
      2);
  std::atomic<int> ok{0}, refused{0};
  auto count = [&](unit r) {
    if (r) ++ok;
    else if (r.error().code == errc::unavailable) ++refused;
  };
  gc.enqueue(one_event_request(), count);
  while (!started) std::this_thread::yield();
  for (int i = 0; i < 5; ++i) gc.enqueue(one_event_request(), count);  // 2 fit, 3 refused at once
  EXPECT_EQ(refused.load(), 3);
  release.set_value();
  gc.stop();
  EXPECT_EQ(ok.load(), 3);
  gc.enqueue(one_event_request(), count);
  EXPECT_EQ(refused.load(), 4);
}

}  // namespace pliers
