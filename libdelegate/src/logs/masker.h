// Secret masking for log streams, errors and results.
#ifndef DELEGATE_LOGS_MASKER_H_
#define DELEGATE_LOGS_MASKER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace delegate::logs {

// The replacement written in place of every secret occurrence.
inline constexpr std::string_view kMask = "**************";

// An immutable set of patterns built from secret values: each value itself,
// each line of a multi-line value, its base64 encoding (standard and URL-safe
// alphabets, without padding, at each of the three byte alignments a secret
// can have inside a longer base64 text) and its URL (percent) encoding.
// Patterns shorter than kMinPatternBytes are not masked (masking "a" would
// destroy every log). Matching is leftmost-longest. Thread-safe once built.
class SecretMasker {
 public:
  static constexpr size_t kMinPatternBytes = 3;

  explicit SecretMasker(const std::vector<std::string>& secrets);
  SecretMasker(const SecretMasker&) = delete;
  SecretMasker& operator=(const SecretMasker&) = delete;
  ~SecretMasker();

  bool empty() const;
  // Length of the longest pattern; a stream holds back at most this minus 1.
  size_t max_pattern_bytes() const;
  // Every occurrence replaced by kMask.
  std::string Mask(std::string_view text) const;

 private:
  friend class MaskingStream;
  struct Automaton;

  // A maximal run of matched bytes, as absolute stream offsets [begin, end).
  struct Range {
    uint64_t begin;
    uint64_t end;
  };
  // A pattern ends at stream offset `end` (exclusive) in automaton state
  // `code`.
  struct Hit {
    uint64_t end;
    uint32_t code;
  };
  // Where matching stands between two writes of a stream. Invariants (with
  // d = depth of `code`): the stream's bytes before `resolved` have been
  // emitted (raw or as part of a mask) and resolved >= pos - d; bytes in
  // [resolved, pos) are held back; `ranges` are matched, not yet emitted,
  // sorted, pairwise non-touching runs inside [resolved, pos).
  struct StreamState {
    uint32_t code = 0;  // automaton state after `pos` bytes
    uint64_t pos = 0;   // bytes consumed
    uint64_t resolved = 0;
    // The byte before `resolved` was masked, so a match starting at or
    // before `resolved` extends that mask instead of starting a new one.
    bool tail_masked = false;
    std::vector<Range> ranges;  // at most max_pattern_bytes() entries
    std::vector<Hit> deferred;  // scratch for one block of a Run
  };

  std::unique_ptr<Automaton> automaton_;
};

// Masks a byte stream written in pieces: a secret split across two Write
// calls (or across lines) is still masked. Holds back only a tail that could
// still grow into a secret. Not thread-safe.
class MaskingStream {
 public:
  using Sink = std::function<void(std::string_view)>;
  // `masker` may be null or empty: bytes pass straight through.
  MaskingStream(std::shared_ptr<const SecretMasker> masker, Sink sink);
  void Write(std::string_view bytes);
  // Emits the held-back tail (the stream ended or paused).
  void Flush();

 private:
  std::shared_ptr<const SecretMasker> masker_;
  Sink sink_;
  std::string pending_;  // the held-back bytes [state_.resolved, state_.pos)
  SecretMasker::StreamState state_;
};

// Splits a byte stream into lines. A line longer than max_line_bytes is cut
// into pieces of that size, each but the last delivered with partial=true.
// "\r\n" ends a line like "\n". Memory is bounded by max_line_bytes.
class LineSplitter {
 public:
  using Sink = std::function<void(std::string_view line, bool partial)>;
  LineSplitter(size_t max_line_bytes, Sink sink);
  void Write(std::string_view bytes);
  // Delivers an unterminated last line, if any.
  void Flush();

 private:
  size_t max_line_bytes_;
  Sink sink_;
  std::string line_;
};

}  // namespace delegate::logs

#endif  // DELEGATE_LOGS_MASKER_H_
