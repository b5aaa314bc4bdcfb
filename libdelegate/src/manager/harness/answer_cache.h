// The answers this delegate sent, kept so that a task the manager delivers
// again is answered again instead of run twice. The manager lists a task in
// runner-events until it has taken the task's response in, which may be a
// few polls after the response was accepted; a task still listed well after
// that is one whose answer the manager lost.
#ifndef DELEGATE_MANAGER_HARNESS_ANSWER_CACHE_H_
#define DELEGATE_MANAGER_HARNESS_ANSWER_CACHE_H_

#include <cstddef>
#include <list>
#include <optional>
#include <string>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "delegate/clock.h"

namespace delegate::harness {

// Thread-safe.
class AnswerCache {
 public:
  // Answers kept; beyond it the oldest goes first.
  static constexpr size_t kDefaultWindow = 10000;

  // How long after the manager accepted an answer a listing of the task is
  // the manager catching up rather than a lost answer: three polls, and at
  // least 10 s.
  static absl::Duration ResendAfter(absl::Duration poll_interval);

  // REQUIRES: `clock` outlives the cache.
  AnswerCache(Clock& clock, absl::Duration resend_after,
              size_t window = kDefaultWindow);
  AnswerCache(const AnswerCache&) = delete;
  AnswerCache& operator=(const AnswerCache&) = delete;

  // Keeps `body` (a TaskResponseBody) as the answer to `task_id`, before it
  // is sent: a delivery that comes again while the manager is away gets this
  // answer, not a second run. The first answer kept for a task stays.
  void Record(const std::string& task_id, const std::string& body);

  // The manager accepted the answer to `task_id` now. Nothing when no
  // answer to it is kept.
  void Accepted(const std::string& task_id);

  // The answer kept for `task_id`, or nullopt.
  std::optional<std::string> Find(const std::string& task_id) const;

  // What a poll that lists `task_id` should do with it.
  enum class Listing {
    kNew,           // never answered (or dropped from the window): run it
    kJustAnswered,  // accepted less than resend_after ago: leave it
    kResend,        // answered, and not accepted lately: send it again
  };
  Listing Classify(const std::string& task_id) const;

 private:
  struct Answered {
    std::string task_id;
    std::string body;
    absl::Time accepted = absl::InfinitePast();
  };

  Clock& clock_;
  const absl::Duration resend_after_;
  const size_t window_;
  mutable absl::Mutex mu_;
  // Oldest first.
  std::list<Answered> answered_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, std::list<Answered>::iterator> index_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace delegate::harness

#endif  // DELEGATE_MANAGER_HARNESS_ANSWER_CACHE_H_
