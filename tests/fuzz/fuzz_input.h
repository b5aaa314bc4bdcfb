// Reading a fuzzer's input as a few decisions and strings, the same way under
// libFuzzer and under the replay driver (standalone_main.cc). Like LLVM's
// FuzzedDataProvider, but readable by g++ too: decisions come off the back
// of the input, strings off the front, so that mutating one seldom shifts
// the other.
#ifndef DELEGATE_TESTS_FUZZ_FUZZ_INPUT_H_
#define DELEGATE_TESTS_FUZZ_FUZZ_INPUT_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace delegate::fuzz {

// An invariant a target checks: a failure aborts, which libFuzzer and the
// replay driver both report as a crash on this input.
#define FUZZ_CHECK(cond, what)                                        \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: check failed: %s: %s\n", __FILE__, \
                   __LINE__, #cond, std::string(what).c_str());       \
      std::abort();                                                   \
    }                                                                 \
  } while (0)

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size)
      : data_(reinterpret_cast<const char*>(data)), size_(size) {}

  bool empty() const { return size_ == 0; }
  size_t remaining() const { return size_; }

  // A byte from the back; 0 once the input is used up.
  uint8_t Byte() {
    if (size_ == 0) return 0;
    --size_;
    return static_cast<uint8_t>(data_[size_]);
  }
  bool Bool() { return (Byte() & 1) != 0; }
  // In [lo, hi], from as many bytes as the range needs.
  uint64_t Range(uint64_t lo, uint64_t hi) {
    if (hi <= lo) return lo;
    const uint64_t span = hi - lo;
    uint64_t v = 0;
    for (uint64_t seen = 0; seen < span && size_ > 0;
         seen = (seen << 8) | 0xff) {
      v = (v << 8) | Byte();
    }
    return lo + (span == UINT64_MAX ? v : v % (span + 1));
  }

  // A string from the front, ended by a lone backslash ("\\" is one
  // backslash), or by the end of the input; at most `max` bytes.
  std::string String(size_t max = SIZE_MAX) {
    std::string out;
    while (size_ > 0 && out.size() < max) {
      char c = *data_++;
      --size_;
      if (c == '\\' && size_ > 0) {
        char next = *data_++;
        --size_;
        if (next != '\\') break;
      }
      out.push_back(c);
    }
    return out;
  }
  // What is left of the front.
  std::string_view Rest() {
    std::string_view out(data_, size_);
    data_ += size_;
    size_ = 0;
    return out;
  }

 private:
  const char* data_;
  size_t size_;
};

}  // namespace delegate::fuzz

#endif  // DELEGATE_TESTS_FUZZ_FUZZ_INPUT_H_
