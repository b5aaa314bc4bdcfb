#include "manager/harness/task_journal.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace delegate::harness {
namespace {

constexpr char kMagic[] = "LDHTJRNL";
constexpr uint32_t kVersion = 1;

}  // namespace

absl::StatusOr<std::unique_ptr<TaskJournal>> TaskJournal::Open(
    const std::string& path, size_t keep_answers) {
  absl::StatusOr<RecordLog::Opened> opened =
      RecordLog::Open(path, kMagic, kVersion);
  if (!opened.ok()) return opened.status();
  std::unique_ptr<TaskJournal> journal(new TaskJournal(keep_answers));
  journal->torn_bytes_ = opened->torn_bytes;
  absl::MutexLock lock(&journal->mu_);
  for (const std::string& record : opened->records) {
    if (!journal->Apply(record)) {
      return UnreadableRecord(path);
    }
  }
  // What the last process left: sorted as it happened.
  std::vector<std::pair<uint64_t, std::string>> order;
  for (const auto& [id, e] : journal->tasks_) order.emplace_back(e.seq, id);
  std::sort(order.begin(), order.end());
  for (const auto& [seq, id] : order) {
    const Entry& e = journal->tasks_.at(id);
    if (!e.answer) {
      journal->interrupted_.push_back({id, e.type, e.step_id});
    } else if (!e.delivered) {
      journal->undelivered_.emplace_back(id, *e.answer);
    }
  }
  // Compaction: the file restarts with what is kept.
  const std::vector<std::string> kept = journal->Snapshot();
  journal->log_ = std::move(opened->log);
  if (absl::Status s = journal->log_->Rewrite(kept); !s.ok()) return s;
  return journal;
}

bool TaskJournal::Apply(std::string_view record) {
  char kind;
  std::vector<std::string_view> f;
  if (!DecodeFields(record, kind, f)) return false;
  if (kind == 'S' && f.size() == 3) {
    Entry& e = tasks_[std::string(f[0])];
    e.seq = next_seq_++;
    e.type = std::string(f[1]);
    e.step_id = std::string(f[2]);
    return true;
  }
  if (kind == 'A' && f.size() == 2) {
    Entry& e = tasks_[std::string(f[0])];
    if (e.seq == 0 && e.type.empty()) e.seq = next_seq_++;
    e.answer = std::string(f[1]);
    e.delivered = false;
    return true;
  }
  if (kind == 'D' && f.size() == 1) {
    auto it = tasks_.find(std::string(f[0]));
    if (it != tasks_.end()) it->second.delivered = true;
    // Past keep_answers, the oldest delivered answers are forgotten.
    return true;
  }
  return false;
}

std::vector<std::string> TaskJournal::Snapshot() const {
  std::vector<std::pair<uint64_t, std::string>> order;
  for (const auto& [id, e] : tasks_) order.emplace_back(e.seq, id);
  std::sort(order.begin(), order.end());
  size_t delivered = 0;
  for (const auto& [id, e] : tasks_) delivered += e.delivered;
  std::vector<std::string> out;
  for (const auto& [seq, id] : order) {
    const Entry& e = tasks_.at(id);
    if (e.delivered && delivered > keep_answers_) {
      --delivered;  // the oldest go first
      continue;
    }
    // A task interrupted before this process is answered by it; until then
    // it stays recorded as started.
    out.push_back(EncodeFields('S', {id, e.type, e.step_id}));
    if (e.answer) out.push_back(EncodeFields('A', {id, *e.answer}));
    if (e.delivered) out.push_back(EncodeFields('D', {id}));
  }
  return out;
}

absl::Status TaskJournal::Write(std::string record, bool defer) {
  absl::MutexLock write(&write_mu_);
  std::vector<std::string> batch;
  bool compact = false;
  std::vector<std::string> kept;
  {
    absl::MutexLock lock(&mu_);
    Apply(record);
    if (defer) {
      pending_.push_back(std::move(record));
      return absl::OkStatus();
    }
    batch.swap(pending_);
    batch.push_back(std::move(record));
    // Rewritten now and then so that the file stays near what is kept.
    since_compaction_ += batch.size();
    if (since_compaction_ >= 4 * keep_answers_ + 64) {
      since_compaction_ = 0;
      kept = Snapshot();
      compact = true;
      // What the snapshot dropped is forgotten here too.
      size_t delivered = 0;
      std::vector<std::pair<uint64_t, std::string>> order;
      for (const auto& [id, e] : tasks_) {
        if (!e.delivered) continue;
        ++delivered;
        order.emplace_back(e.seq, id);
      }
      std::sort(order.begin(), order.end());
      for (size_t i = 0; delivered > keep_answers_ && i < order.size(); ++i) {
        tasks_.erase(order[i].second);
        --delivered;
      }
    }
  }
  // The snapshot holds the batch's effects: written as a whole instead.
  // Where the rewrite fails (no room for the new copy), the batch is
  // appended to the file as it is.
  if (compact && log_->Rewrite(kept).ok()) return absl::OkStatus();
  return log_->Append(batch);
}

TaskJournal::~TaskJournal() {
  absl::MutexLock write(&write_mu_);
  std::vector<std::string> batch;
  {
    absl::MutexLock lock(&mu_);
    batch.swap(pending_);
  }
  if (log_ && !batch.empty()) (void)log_->Append(batch);
}

std::optional<std::string> TaskJournal::AnswerOf(
    const std::string& task_id) const {
  absl::MutexLock lock(&mu_);
  auto it = tasks_.find(task_id);
  if (it == tasks_.end()) return std::nullopt;
  return it->second.answer;
}

absl::Status TaskJournal::Started(const std::string& task_id,
                                  const std::string& type,
                                  const std::string& step_id) {
  return Write(EncodeFields('S', {task_id, type, step_id}));
}

absl::Status TaskJournal::Answered(const std::string& task_id,
                                   const std::string& body) {
  return Write(EncodeFields('A', {task_id, body}));
}

absl::Status TaskJournal::Delivered(const std::string& task_id) {
  return Write(EncodeFields('D', {task_id}), /*defer=*/true);
}

}  // namespace delegate::harness
