#include "manager/harness/task_journal.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace delegate::harness {
namespace {

constexpr char kMagic[] = "LDHTJRNL";
// 2: task payloads and stage keys in 'S', open stages ('O'), the delegate
// id ('I'). Version 1 journals are read as they are.
constexpr uint32_t kVersion = 2;
constexpr size_t kCompactAfterBytes = 16 << 20;

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
      journal->interrupted_.push_back(
          {id, e.type, e.step_id, e.stage_key, e.payload, e.log_lines});
    } else if (!e.delivered) {
      journal->undelivered_.emplace_back(id, *e.answer);
    }
    if (e.type == "local_init" && journal->OpensAStageLocked(id, e)) {
      journal->open_stages_.push_back({e.stage_key, id, e.payload});
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
  if (kind == 'S' && (f.size() == 3 || f.size() == 5)) {
    const std::string id(f[0]);
    Entry& e = tasks_[id];
    e.seq = next_seq_++;
    e.type = std::string(f[1]);
    e.step_id = std::string(f[2]);
    if (f.size() == 5) {
      e.stage_key = std::string(f[3]);
      e.payload = std::string(f[4]);
    }
    if (e.type == "local_cleanup" && !e.stage_key.empty()) {
      // The stage is closing: its init's payload is no longer needed.
      if (auto open = open_.find(e.stage_key); open != open_.end()) {
        if (auto init = tasks_.find(open->second); init != tasks_.end()) {
          init->second.payload.clear();
        }
        open_.erase(open);
      }
    }
    return true;
  }
  if (kind == 'A' && f.size() == 2) {
    Entry& e = tasks_[std::string(f[0])];
    if (e.seq == 0 && e.type.empty()) e.seq = next_seq_++;
    e.answer = std::string(f[1]);
    e.delivered = false;
    // Answered: only an open stage's init needs its payload still.
    if (!OpensAStageLocked(std::string(f[0]), e)) e.payload.clear();
    return true;
  }
  if (kind == 'O' && f.size() == 2) {
    open_[std::string(f[0])] = std::string(f[1]);
    return true;
  }
  if (kind == 'C' && f.size() == 2) {
    auto open = open_.find(std::string(f[0]));
    if (open != open_.end() && open->second == f[1]) {
      if (auto init = tasks_.find(open->second); init != tasks_.end()) {
        init->second.payload.clear();
      }
      open_.erase(open);
    }
    return true;
  }
  if (kind == 'L' && f.size() == 2) {
    uint64_t lines = 0;
    if (!absl::SimpleAtoi(AbslView(f[1]), &lines)) return false;
    auto it = tasks_.find(std::string(f[0]));
    if (it != tasks_.end() && !it->second.answer) it->second.log_lines = lines;
    return true;
  }
  if (kind == 'I' && f.size() == 1) {
    delegate_id_ = std::string(f[0]);
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
  for (const auto& [id, e] : tasks_) {
    delivered += e.delivered && !OpensAStageLocked(id, e);
  }
  std::vector<std::string> out;
  for (const auto& [seq, id] : order) {
    const Entry& e = tasks_.at(id);
    const bool opens = OpensAStageLocked(id, e);
    if (e.delivered && delivered > keep_answers_ && !opens) {
      --delivered;  // the oldest go first
      continue;
    }
    // A task interrupted before this process is answered by it; until then
    // it stays recorded as started, with its payload.
    out.push_back(EncodeFields(
        'S', {id, e.type, e.step_id, e.stage_key,
              !e.answer || opens ? std::string_view(e.payload) : ""}));
    // Right after its init: a cleanup of an earlier stage of the same key
    // (before it) does not close it, and its answer (after) keeps the
    // payload.
    if (opens) out.push_back(EncodeFields('O', {e.stage_key, id}));
    if (!e.answer && e.log_lines > 0) {
      out.push_back(EncodeFields('L', {id, absl::StrCat(e.log_lines)}));
    }
    if (e.answer) out.push_back(EncodeFields('A', {id, *e.answer}));
    if (e.delivered) out.push_back(EncodeFields('D', {id}));
  }
  if (!delegate_id_.empty()) out.push_back(EncodeFields('I', {delegate_id_}));
  return out;
}

bool TaskJournal::OpensAStageLocked(const std::string& id,
                                    const Entry& e) const {
  if (e.type != "local_init" || e.stage_key.empty()) return false;
  auto it = open_.find(e.stage_key);
  return it != open_.end() && it->second == id;
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
    for (const std::string& r : batch) since_compaction_bytes_ += r.size();
    // Payloads make records big: the bytes count too.
    if (since_compaction_ >= 4 * keep_answers_ + 64 ||
        since_compaction_bytes_ >= kCompactAfterBytes) {
      since_compaction_ = 0;
      since_compaction_bytes_ = 0;
      kept = Snapshot();
      compact = true;
      // What the snapshot dropped is forgotten here too.
      size_t delivered = 0;
      std::vector<std::pair<uint64_t, std::string>> order;
      for (const auto& [id, e] : tasks_) {
        if (!e.delivered || OpensAStageLocked(id, e)) continue;
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

std::string TaskJournal::delegate_id() const {
  absl::MutexLock lock(&mu_);
  return delegate_id_;
}

absl::Status TaskJournal::Started(const std::string& task_id,
                                  const std::string& type,
                                  const std::string& step_id,
                                  const std::string& stage_key,
                                  const std::string& payload) {
  return Write(EncodeFields('S', {task_id, type, step_id, stage_key, payload}));
}

absl::Status TaskJournal::StageOpened(const std::string& stage_key,
                                      const std::string& init_task_id) {
  // Goes out with the init's answer, which is written before it is sent.
  return Write(EncodeFields('O', {stage_key, init_task_id}), /*defer=*/true);
}

absl::Status TaskJournal::LogLinesHandled(const std::string& task_id,
                                          uint64_t lines) {
  return Write(EncodeFields('L', {task_id, absl::StrCat(lines)}));
}

absl::Status TaskJournal::StageClosed(const std::string& stage_key,
                                      const std::string& init_task_id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = open_.find(stage_key);
    if (it == open_.end() || it->second != init_task_id) {
      return absl::OkStatus();  // not open, or another stage of the key
    }
  }
  return Write(EncodeFields('C', {stage_key, init_task_id}));
}

absl::Status TaskJournal::Registered(const std::string& delegate_id) {
  {
    absl::MutexLock lock(&mu_);
    if (delegate_id_ == delegate_id) return absl::OkStatus();
  }
  return Write(EncodeFields('I', {delegate_id}));
}

absl::Status TaskJournal::Answered(const std::string& task_id,
                                   const std::string& body) {
  return Write(EncodeFields('A', {task_id, body}));
}

absl::Status TaskJournal::Delivered(const std::string& task_id) {
  return Write(EncodeFields('D', {task_id}), /*defer=*/true);
}

}  // namespace delegate::harness
