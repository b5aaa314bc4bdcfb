#include "delegate/stage_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "config/stage_decoder.h"
#include "config/stage_document.h"
#include "logs/masker.h"

namespace delegate {
namespace {

using config::Document;
using config::Problem;

// Problems listed in one error; the rest are counted.
constexpr size_t kMaxReportedProblems = 100;

absl::Status Failure(absl::string_view source, std::vector<Problem> problems,
                     const std::vector<std::string>& secrets) {
  std::stable_sort(
      problems.begin(), problems.end(), [](const Problem& a, const Problem& b) {
        return std::pair(a.line, a.column) < std::pair(b.line, b.column);
      });
  // Secret values are masked the way log lines are.
  const logs::SecretMasker masker(secrets);
  std::vector<std::string> lines;
  for (const Problem& p : problems) {
    if (lines.size() == kMaxReportedProblems) {
      lines.push_back(absl::StrCat(source, ": ... and ",
                                   problems.size() - kMaxReportedProblems,
                                   " more problems"));
      break;
    }
    std::string line(source);
    if (p.line > 0) absl::StrAppend(&line, ":", p.line, ":", p.column);
    std::string detail =
        p.path.empty() ? p.message : absl::StrCat(p.path, ": ", p.message);
    absl::StrAppend(&line, ": ", masker.Mask(detail));
    lines.push_back(std::move(line));
  }
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

// The first character that is not blank (a UTF-8 BOM counts as blank), or
// nullopt when there is none.
std::optional<char> FirstNonBlank(absl::string_view content) {
  if (absl::StartsWith(content, "\xEF\xBB\xBF")) content.remove_prefix(3);
  for (char c : content) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return c;
  }
  return std::nullopt;
}

constexpr absl::string_view kEmptyFile =
    "the file is empty: a stage needs at least name and steps";

}  // namespace

absl::StatusOr<Stage> ParseStage(std::string_view content_in,
                                 std::string_view source_in) {
  // This Abseil build has its own string_view type, distinct from std's.
  const absl::string_view content(content_in.data(), content_in.size());
  const absl::string_view source(source_in.data(), source_in.size());
  if (content.size() > config::kMaxDocumentBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": the file is larger than ", config::kMaxDocumentBytes >> 20,
        " MiB (", content.size(), " bytes)"));
  }
  const std::optional<char> first = FirstNonBlank(content);
  // Checked here because libyaml rejects some blank files (a tab at the start
  // of a line) that are empty all the same.
  if (!first) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", kEmptyFile));
  }
  config::ParsedDocument parsed = *first == '{' || *first == '['
                                      ? config::ReadJson(content)
                                      : config::ReadYaml(content);
  if (!parsed.complete) return Failure(source, std::move(parsed.problems), {});
  const Document& doc = parsed.document;
  if (!doc.has_root || doc.node(doc.root).is_null()) {
    parsed.problems.push_back({0, 0, "", std::string(kEmptyFile)});
    return Failure(source, std::move(parsed.problems), {});
  }
  config::DecodedStage decoded = config::DecodeStage(doc);
  // A complete document may still carry the reader's problems (an unsupported
  // tag, a key that is not a string); they are reported with the decoder's.
  parsed.problems.insert(parsed.problems.end(),
                         std::make_move_iterator(decoded.problems.begin()),
                         std::make_move_iterator(decoded.problems.end()));
  if (!parsed.problems.empty()) {
    return Failure(source, std::move(parsed.problems), decoded.secret_values);
  }
  return std::move(decoded.stage);
}

absl::StatusOr<Stage> LoadStageFile(const std::string& path) {
  // O_NONBLOCK so that opening a FIFO nobody writes to does not hang; it is
  // cleared before reading.
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    }
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(
          absl::StrCat(path, ": permission denied"));
    }
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot open"));
  }
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat st {};
  if (fstat(fd, &st) != 0) st.st_mode = 0;
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": is a directory, not a stage file"));
  }
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);

  // One byte more than the limit tells "too large" from "exactly the limit".
  const size_t limit = config::kMaxDocumentBytes + 1;
  std::string content;
  if (S_ISREG(st.st_mode) && st.st_size > 0) {
    content.reserve(std::min<size_t>(static_cast<size_t>(st.st_size), limit));
  }
  char buffer[64 * 1024];
  while (content.size() < limit) {
    const size_t want = std::min(sizeof(buffer), limit - content.size());
    const ssize_t n = read(fd, buffer, want);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      if (err == EISDIR) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": is a directory, not a stage file"));
      }
      return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot read"));
    }
    if (n == 0) break;
    content.append(buffer, static_cast<size_t>(n));
  }
  if (content.size() > config::kMaxDocumentBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the file is larger than ",
                     config::kMaxDocumentBytes >> 20, " MiB"));
  }
  return ParseStage(content, path);
}

}  // namespace delegate