#include "manager/grpc/session_journal.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "util/strings.h"

namespace delegate::grpcv1 {
namespace {

constexpr char kMagic[] = "LDSESJRN";
constexpr uint32_t kVersion = 1;
// Records written before the file is rewritten with the open runs alone
// (with an fdatasync): about 20,000 stages, 2 MB.
constexpr size_t kRewriteEvery = 64 * 1024;

}  // namespace

absl::StatusOr<std::unique_ptr<SessionJournal>> SessionJournal::Open(
    const std::string& path) {
  absl::StatusOr<RecordLog::Opened> opened =
      RecordLog::Open(path, kMagic, kVersion);
  if (!opened.ok()) return opened.status();
  std::unique_ptr<SessionJournal> journal(new SessionJournal());
  journal->torn_bytes_ = opened->torn_bytes;
  absl::MutexLock lock(&journal->write_mu_);
  for (const std::string& record : opened->records) {
    if (!journal->Apply(record)) {
      return UnreadableRecord(path);
    }
  }
  for (const auto& [key, e] : journal->open_) {
    journal->interrupted_.push_back(
        {key.first, e.lease_id, key.second, e.lease_ms, e.step_id, e.result});
  }
  // Compaction: the file restarts with the open runs. On a full disk it
  // stays as it is (appends go on after its records), and is tried again.
  journal->log_ = std::move(opened->log);
  if (!journal->log_->Rewrite(journal->Snapshot()).ok()) {
    journal->since_rewrite_ = kRewriteEvery;
  }
  return journal;
}

bool SessionJournal::Apply(std::string_view record) {
  char kind;
  std::vector<std::string_view> f;
  uint64_t token = 0;
  if (!DecodeFields(record, kind, f) || f.size() < 2 ||
      !absl::SimpleAtoi(AbslView(f[1]), &token)) {
    return false;
  }
  Key key(std::string(f[0]), token);
  if (kind == 'D' && f.size() == 4) {
    Entry& e = open_[key];
    e.lease_id = std::string(f[2]);
    if (!absl::SimpleAtoi(AbslView(f[3]), &e.lease_ms)) return false;
    return true;
  }
  if (kind == 'F' && f.size() == 3) {
    auto it = open_.find(key);
    if (it != open_.end()) it->second.result = std::string(f[2]);
    return true;
  }
  if (kind == 'S' && f.size() == 3) {
    auto it = open_.find(key);
    if (it != open_.end()) it->second.step_id = std::string(f[2]);
    return true;
  }
  if (kind == 'R' && f.size() == 2) {
    open_.erase(key);
    return true;
  }
  return false;
}

std::vector<std::string> SessionJournal::Snapshot() const {
  std::vector<std::string> out;
  for (const auto& [key, e] : open_) {
    const std::string token = absl::StrCat(key.second);
    out.push_back(EncodeFields(
        'D', {key.first, token, e.lease_id, absl::StrCat(e.lease_ms)}));
    if (!e.step_id.empty()) {
      out.push_back(EncodeFields('S', {key.first, token, e.step_id}));
    }
    if (e.result)
      out.push_back(EncodeFields('F', {key.first, token, *e.result}));
  }
  return out;
}

void SessionJournal::Add(std::string record) {
  absl::MutexLock lock(&mu_);
  pending_.push_back(std::move(record));
}

absl::Status SessionJournal::Flush() {
  // One flush at a time; Add goes on meanwhile (it never waits on the disk).
  absl::MutexLock write(&write_mu_);
  std::vector<std::string> batch;
  {
    absl::MutexLock lock(&mu_);
    if (pending_.empty()) return absl::OkStatus();
    batch.swap(pending_);
  }
  for (const std::string& r : batch) Apply(r);
  since_rewrite_ += batch.size();
  if (since_rewrite_ >= kRewriteEvery) {
    // Rewritten now and then with the open runs alone (the snapshot holds
    // the batch), so that the file stays small. Where that fails (no room
    // for the new copy), the batch is appended and the rewrite tried again
    // with the next flush.
    if (log_->Rewrite(Snapshot()).ok()) {
      since_rewrite_ = 0;
      return absl::OkStatus();
    }
  }
  return log_->Append(batch);
}

SessionJournal::~SessionJournal() {
  if (log_) (void)Flush();
}

void SessionJournal::Dispatched(const std::string& stage_id,
                                const std::string& lease_id,
                                uint64_t fencing_token, absl::Duration lease) {
  Add(EncodeFields('D', {stage_id, absl::StrCat(fencing_token), lease_id,
                         absl::StrCat(absl::ToInt64Milliseconds(lease))}));
}

void SessionJournal::Finished(const std::string& stage_id,
                              uint64_t fencing_token,
                              const std::string& result) {
  Add(EncodeFields('F', {stage_id, absl::StrCat(fencing_token), result}));
}

void SessionJournal::StepStarted(const std::string& stage_id,
                                 uint64_t fencing_token,
                                 const std::string& step_id) {
  Add(EncodeFields('S', {stage_id, absl::StrCat(fencing_token), step_id}));
}

void SessionJournal::Retired(const std::string& stage_id,
                             uint64_t fencing_token) {
  Add(EncodeFields('R', {stage_id, absl::StrCat(fencing_token)}));
}

}  // namespace delegate::grpcv1
