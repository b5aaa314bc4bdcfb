#include "manager/harness/answer_cache.h"

#include <algorithm>
#include <iterator>

namespace delegate::harness {

absl::Duration AnswerCache::ResendAfter(absl::Duration poll_interval) {
  return std::max(absl::Seconds(10), 3 * poll_interval);
}

AnswerCache::AnswerCache(Clock& clock, absl::Duration resend_after,
                         size_t window)
    : clock_(clock), resend_after_(resend_after), window_(window) {}

void AnswerCache::Record(const std::string& task_id, const std::string& body) {
  absl::MutexLock lock(&mu_);
  if (index_.count(task_id)) return;
  answered_.push_back({task_id, body});
  index_[task_id] = std::prev(answered_.end());
  if (answered_.size() > window_) {
    index_.erase(answered_.front().task_id);
    answered_.pop_front();
  }
}

void AnswerCache::Accepted(const std::string& task_id) {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  if (auto it = index_.find(task_id); it != index_.end()) {
    it->second->accepted = now;
  }
}

std::optional<std::string> AnswerCache::Find(const std::string& task_id) const {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(task_id);
  if (it == index_.end()) return std::nullopt;
  return it->second->body;
}

AnswerCache::Listing AnswerCache::Classify(const std::string& task_id) const {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  auto it = index_.find(task_id);
  if (it == index_.end()) return Listing::kNew;
  // An answer never accepted counts as accepted infinitely long ago.
  return now - it->second->accepted < resend_after_ ? Listing::kJustAnswered
                                                    : Listing::kResend;
}

}  // namespace delegate::harness
