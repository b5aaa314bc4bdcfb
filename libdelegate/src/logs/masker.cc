#include "logs/masker.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace delegate::logs {
namespace {

// Entries of the dense transition table. Rows are given to states in BFS
// order until the budget is spent; deeper states (long chains inside long
// patterns, rarely visited by ordinary log text) use their goto edges and
// fail links. 2^19 entries = 2 MiB.
constexpr size_t kDenseBudget = size_t{1} << 19;

// Input is scanned in blocks of this size, which bounds the matches a block
// can defer (see Run).
constexpr size_t kBlockBytes = size_t{1} << 18;
// Below this many bytes per lane, one lane is as fast as two.
constexpr size_t kMinLaneBytes = 256;

// An encoded form shorter than this is too likely to occur by chance.
constexpr size_t kMinDerivedBytes = 4;

constexpr std::string_view kStdAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr std::string_view kUrlAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// Base64 without '=' padding; a final partial group yields 2 or 3 chars.
std::string Base64(std::string_view in, std::string_view alphabet) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    const uint32_t v = uint32_t{static_cast<uint8_t>(in[i])} << 16 |
                       uint32_t{static_cast<uint8_t>(in[i + 1])} << 8 |
                       static_cast<uint8_t>(in[i + 2]);
    out.push_back(alphabet[v >> 18]);
    out.push_back(alphabet[(v >> 12) & 63]);
    out.push_back(alphabet[(v >> 6) & 63]);
    out.push_back(alphabet[v & 63]);
  }
  const size_t rest = in.size() - i;
  if (rest > 0) {
    uint32_t v = uint32_t{static_cast<uint8_t>(in[i])} << 16;
    if (rest == 2) v |= uint32_t{static_cast<uint8_t>(in[i + 1])} << 8;
    out.push_back(alphabet[v >> 18]);
    out.push_back(alphabet[(v >> 12) & 63]);
    if (rest == 2) out.push_back(alphabet[(v >> 6) & 63]);
  }
  return out;
}

void AddDerived(std::string pattern, std::vector<std::string>* out) {
  if (pattern.size() >= kMinDerivedBytes) out->push_back(std::move(pattern));
}

// The secret encoded on its own, plus, for each offset mod 3 it can have
// inside a longer encoded blob, the characters whose 6 bits all come from
// the secret. Characters straddling a neighbouring byte differ from blob to
// blob, so they cannot be part of a pattern.
void AddBase64(std::string_view value, std::string_view alphabet,
               std::vector<std::string>* out) {
  AddDerived(Base64(value, alphabet), out);
  std::string shifted;
  for (size_t align = 0; align < 3; ++align) {
    shifted.assign(align, '\0');
    shifted.append(value);
    const std::string encoded = Base64(shifted, alphabet);
    // Char j covers bits [6j, 6j + 6); the secret covers [8a, 8(a + n)).
    const size_t first = (8 * align + 5) / 6;
    const size_t last = 8 * shifted.size() / 6;  // exclusive
    if (last > first) AddDerived(encoded.substr(first, last - first), out);
  }
}

bool IsUnreserved(uint8_t c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

std::string PercentEncode(std::string_view value, std::string_view hex,
                          bool plus_for_space) {
  std::string out;
  out.reserve(value.size() * 3);
  for (const char ch : value) {
    const auto c = static_cast<uint8_t>(ch);
    if (IsUnreserved(c)) {
      out.push_back(ch);
    } else if (c == ' ' && plus_for_space) {
      out.push_back('+');
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

// `common` selects what most JSON encoders emit (\b \f \r short escapes,
// lowercase \u00xx); otherwise only \n and \t are short and \u00XX is
// uppercase.
std::string JsonEscape(std::string_view value, bool common) {
  const std::string_view hex = common ? "0123456789abcdef" : "0123456789ABCDEF";
  std::string out;
  out.reserve(value.size() + 8);
  for (const char ch : value) {
    const auto c = static_cast<uint8_t>(ch);
    switch (c) {
      case '"':
        out.append("\\\"");
        continue;
      case '\\':
        out.append("\\\\");
        continue;
      case '\n':
        out.append("\\n");
        continue;
      case '\t':
        out.append("\\t");
        continue;
      default:
        break;
    }
    if (common && (c == '\r' || c == '\b' || c == '\f')) {
      out.push_back('\\');
      out.push_back(c == '\r' ? 'r' : c == '\b' ? 'b' : 'f');
    } else if (c < 0x20) {
      out.append("\\u00");
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    } else {
      out.push_back(ch);
    }
  }
  return out;
}

std::vector<std::string> BuildPatterns(
    const std::vector<std::string>& secrets) {
  std::vector<std::string> patterns;
  for (const std::string& value : secrets) {
    if (value.size() < SecretMasker::kMinPatternBytes) continue;
    patterns.push_back(value);
    if (value.find('\n') != std::string::npos) {
      std::string_view rest = value;
      while (!rest.empty()) {
        const size_t nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        rest = nl == std::string_view::npos ? std::string_view()
                                            : rest.substr(nl + 1);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.size() >= SecretMasker::kMinPatternBytes) {
          patterns.emplace_back(line);
        }
      }
    }
    AddBase64(value, kStdAlphabet, &patterns);
    AddBase64(value, kUrlAlphabet, &patterns);
    for (std::string encoded :
         {PercentEncode(value, "0123456789ABCDEF", false),
          PercentEncode(value, "0123456789abcdef", false),
          PercentEncode(value, "0123456789ABCDEF", true),
          JsonEscape(value, false), JsonEscape(value, true)}) {
      if (encoded != value) AddDerived(std::move(encoded), &patterns);
    }
  }
  std::sort(patterns.begin(), patterns.end());
  patterns.erase(std::unique(patterns.begin(), patterns.end()), patterns.end());
  return patterns;
}

}  // namespace

// Aho–Corasick automaton. States are trie nodes numbered in BFS order; the
// first `num_dense` have a full row in `dense` (a DFA over byte classes), the
// rest keep their goto edges and a fail link. A state is handled as a "code":
// its row offset in `dense` for a dense state, dense_limit + index for a
// sparse one, so the common step is one add and one load. Rows of states at
// which a pattern ends are placed after all others, so one comparison
// (code >= out_lo) catches both "a pattern ends here" and "sparse state".
struct SecretMasker::Automaton {
  std::array<uint16_t, 256> byte_class{};  // 0 = byte in no pattern
  uint32_t num_classes = 1;
  uint32_t num_dense = 0;
  uint32_t out_lo = 0;                 // first row offset with an output
  uint32_t dense_limit = 0;            // num_dense * num_classes
  std::vector<uint32_t> dense;         // next state codes
  std::vector<uint32_t> row_node;      // by row: its node
  std::vector<uint32_t> sparse_begin;  // edges of sparse state s: [s], [s+1]
  std::vector<uint8_t> sparse_byte;
  std::vector<uint32_t> sparse_next;  // state codes
  std::vector<uint32_t> sparse_fail;  // state codes
  std::vector<uint32_t> depth;        // by node: length of its prefix
  std::vector<uint32_t> longest;      // by node: longest pattern ending here
  size_t max_len = 0;

  static std::unique_ptr<Automaton> Build(
      const std::vector<std::string>& patterns);

  uint32_t Node(uint32_t code) const {
    return code < dense_limit ? row_node[code / num_classes]
                              : num_dense + (code - dense_limit);
  }

  uint32_t SparseStep(uint32_t code, uint8_t byte) const {
    do {
      const uint32_t s = code - dense_limit;
      for (uint32_t k = sparse_begin[s]; k < sparse_begin[s + 1]; ++k) {
        if (sparse_byte[k] == byte) return sparse_next[k];
      }
      code = sparse_fail[s];  // strictly shallower: amortized O(1) per byte
    } while (code >= dense_limit);
    return dense[code + byte_class[byte]];
  }

  // `s` (>= out_lo) is the state after the byte before `p`. Reports it if a
  // pattern ends there; from a sparse state, keeps stepping until back in a
  // dense state or at `end`. report(p, s): a pattern ends just before p.
  template <class Report>
  const uint8_t* Slow(uint32_t& s, const uint8_t* p, const uint8_t* end,
                      Report& report) const {
    if (s < dense_limit) {
      report(p, s);
      return p;
    }
    while (true) {
      if (longest[Node(s)] > 0) report(p, s);
      if (p == end) return p;
      s = SparseStep(s, *p++);
      if (s < out_lo) return p;
      if (s < dense_limit) {
        report(p, s);
        return p;
      }
    }
  }

  // Leaves a sparse state (the input before `p` has been reported) so the
  // dense loop can take over.
  template <class Report>
  const uint8_t* Resume(uint32_t& s, const uint8_t* p, const uint8_t* end,
                        Report& report) const {
    if (s >= dense_limit && p < end) {
      s = SparseStep(s, *p++);
      if (s >= out_lo) p = Slow(s, p, end, report);
    }
    return p;
  }

  template <class Report>
  uint32_t Scan(uint32_t s, const uint8_t* p, const uint8_t* end,
                Report& report) const {
    p = Resume(s, p, end, report);
    const uint32_t* table = dense.data();
    const uint16_t* cls = byte_class.data();
    const uint32_t lo = out_lo;
    while (p < end) {
      s = table[s + cls[*p++]];
      if (s >= lo) [[unlikely]] {
        p = Slow(s, p, end, report);
      }
    }
    return s;
  }

  // Two independent lanes for instruction-level parallelism: lane a from
  // state `sa`, lane b from the root. Returns lane b's final state.
  template <class ReportA, class ReportB>
  uint32_t ScanTwo(uint32_t sa, const uint8_t* pa, const uint8_t* ea,
                   const uint8_t* pb, const uint8_t* eb, ReportA& ra,
                   ReportB& rb) const {
    pa = Resume(sa, pa, ea, ra);
    uint32_t sb = 0;
    const uint32_t* table = dense.data();
    const uint16_t* cls = byte_class.data();
    const uint32_t lo = out_lo;
    while (pa < ea && pb < eb) {
      sa = table[sa + cls[*pa++]];
      sb = table[sb + cls[*pb++]];
      if (sa >= lo) [[unlikely]] {
        pa = Slow(sa, pa, ea, ra);
      }
      if (sb >= lo) [[unlikely]] {
        pb = Slow(sb, pb, eb, rb);
      }
    }
    Scan(sa, pa, ea, ra);
    return Scan(sb, pb, eb, rb);
  }

  // Consumes `input` (which follows the held bytes in *pending) and emits
  // every byte that no future input can change; with `flush`, emits all.
  // Leaves the held-back tail in *pending. `emit` receives pieces of output.
  template <class Emit>
  void Run(StreamState& st, std::string* pending, std::string_view input,
           bool flush, Emit& emit) const;
};

std::unique_ptr<SecretMasker::Automaton> SecretMasker::Automaton::Build(
    const std::vector<std::string>& patterns) {
  struct TrieNode {
    std::vector<std::pair<uint8_t, uint32_t>> next;  // sorted by byte
    uint32_t depth = 0;
    uint32_t own = 0;  // length of the pattern ending here, if any
  };
  auto child = [](const TrieNode& n, uint8_t b) -> uint32_t {
    auto it = std::lower_bound(n.next.begin(), n.next.end(), b,
                               [](const std::pair<uint8_t, uint32_t>& e,
                                  uint8_t v) { return e.first < v; });
    return it != n.next.end() && it->first == b ? it->second : 0;
  };

  auto a = std::make_unique<Automaton>();
  std::vector<TrieNode> trie(1);
  std::array<bool, 256> used{};
  for (const std::string& p : patterns) {
    uint32_t u = 0;
    for (const char ch : p) {
      const auto b = static_cast<uint8_t>(ch);
      used[b] = true;
      uint32_t v = child(trie[u], b);
      if (v == 0) {
        v = static_cast<uint32_t>(trie.size());
        const uint32_t d = trie[u].depth + 1;
        trie.emplace_back();
        trie[v].depth = d;
        auto& next = trie[u].next;
        next.insert(std::lower_bound(next.begin(), next.end(),
                                     std::make_pair(b, uint32_t{0})),
                    {b, v});
      }
      u = v;
    }
    trie[u].own = static_cast<uint32_t>(p.size());
    a->max_len = std::max(a->max_len, p.size());
  }
  const size_t n = trie.size();

  // BFS order, fail links and the longest match per node (trie ids).
  std::vector<uint32_t> order;
  order.reserve(n);
  order.push_back(0);
  std::vector<uint32_t> fail(n, 0);
  std::vector<uint32_t> longest(n, 0);
  for (size_t i = 0; i < order.size(); ++i) {
    const uint32_t u = order[i];
    for (const auto& [b, v] : trie[u].next) {
      order.push_back(v);
      uint32_t f = 0;
      if (u != 0) {
        f = fail[u];
        while (true) {
          const uint32_t g = child(trie[f], b);
          if (g != 0) {
            f = g;
            break;
          }
          if (f == 0) break;
          f = fail[f];
        }
      }
      fail[v] = f;
      longest[v] = std::max(trie[v].own, longest[f]);
    }
  }
  std::vector<uint32_t> id(n);  // trie id -> node (BFS) id
  for (size_t i = 0; i < n; ++i) id[order[i]] = static_cast<uint32_t>(i);

  uint32_t classes = 1;
  for (int b = 0; b < 256; ++b) {
    if (used[b]) a->byte_class[b] = static_cast<uint16_t>(classes++);
  }
  a->num_classes = classes;
  const auto num_dense = static_cast<uint32_t>(
      std::min(n, std::max<size_t>(1, kDenseBudget / classes)));
  a->num_dense = num_dense;
  a->dense_limit = num_dense * classes;
  if (uint64_t{a->dense_limit} + (n - num_dense) >
      std::numeric_limits<uint32_t>::max()) {
    std::abort();  // patterns totalling ~2^32 bytes: secrets of ~400 MB
  }

  a->depth.resize(n);
  a->longest.resize(n);
  for (size_t i = 0; i < n; ++i) {
    a->depth[i] = trie[order[i]].depth;
    a->longest[i] = longest[order[i]];
  }
  // Rows: dense nodes without output first (the root, row 0, among them).
  std::vector<uint32_t> row(num_dense);
  uint32_t plain = 0;
  for (uint32_t i = 0; i < num_dense; ++i) plain += a->longest[i] == 0;
  a->out_lo = plain * classes;
  a->row_node.resize(num_dense);
  for (uint32_t i = 0, r0 = 0, r1 = plain; i < num_dense; ++i) {
    row[i] = a->longest[i] == 0 ? r0++ : r1++;
    a->row_node[row[i]] = i;
  }
  auto code = [&](uint32_t trie_id) {
    const uint32_t i = id[trie_id];
    return i < num_dense ? row[i] * classes : a->dense_limit + (i - num_dense);
  };

  // A dense row is its fail state's row (an earlier node in BFS order, so
  // already filled) with the node's own goto edges written over it; the
  // root's default is itself.
  a->dense.assign(a->dense_limit, 0);
  for (uint32_t i = 0; i < num_dense; ++i) {
    const uint32_t u = order[i];
    uint32_t* out = a->dense.data() + code(u);
    if (i != 0) {
      const uint32_t* from = a->dense.data() + code(fail[u]);
      std::copy(from, from + classes, out);
    }
    for (const auto& [b, v] : trie[u].next) out[a->byte_class[b]] = code(v);
  }
  a->sparse_begin.reserve(n - num_dense + 1);
  a->sparse_begin.push_back(0);
  for (size_t i = num_dense; i < n; ++i) {
    const uint32_t u = order[i];
    for (const auto& [b, v] : trie[u].next) {
      a->sparse_byte.push_back(b);
      a->sparse_next.push_back(code(v));
    }
    a->sparse_begin.push_back(static_cast<uint32_t>(a->sparse_byte.size()));
    a->sparse_fail.push_back(code(fail[u]));
  }
  return a;
}

template <class Emit>
void SecretMasker::Automaton::Run(StreamState& st, std::string* pending,
                                  std::string_view input, bool flush,
                                  Emit& emit) const {
  // The text is *pending (stream offsets [held_base, input_base)) followed
  // by input.
  const uint64_t input_base = st.pos;
  const uint64_t held_base = input_base - pending->size();
  const std::string_view held = *pending;
  auto emit_raw = [&](uint64_t from, uint64_t to) {
    if (from < input_base) {
      const uint64_t end = std::min(to, input_base);
      if (end > from) emit(held.substr(from - held_base, end - from));
      from = end;
    }
    if (to > from) emit(input.substr(from - input_base, to - from));
  };
  // No match can start before `frontier` any more, so a range starting at
  // or before it keeps its start and its kMask can go out now; its end may
  // still grow (tail_masked).
  auto commit = [&](uint64_t frontier) {
    size_t k = 0;
    for (; k < st.ranges.size() && st.ranges[k].begin <= frontier; ++k) {
      emit_raw(st.resolved, st.ranges[k].begin);
      emit(kMask);
      st.resolved = st.ranges[k].end;
      st.tail_masked = true;
    }
    if (k > 0) st.ranges.erase(st.ranges.begin(), st.ranges.begin() + k);
  };
  // Called in increasing `end` order. Only the longest match ending at a
  // byte matters: shorter ones ending there lie inside it.
  auto on_match = [&](uint64_t end, uint32_t state) {
    const uint32_t node = Node(state);
    uint64_t begin = end - longest[node];
    while (!st.ranges.empty() && st.ranges.back().end >= begin) {
      begin = std::min(begin, st.ranges.back().begin);
      st.ranges.pop_back();
    }
    if (st.ranges.empty() && st.tail_masked && begin <= st.resolved) {
      st.resolved = std::max(st.resolved, end);  // swallowed by that mask
    } else {
      st.ranges.push_back({begin, end});
    }
    commit(end - depth[node]);
  };

  const auto* data = reinterpret_cast<const uint8_t*>(input.data());
  uint32_t state = st.code;
  for (size_t done = 0; done < input.size();) {
    const size_t n = std::min(input.size() - done, kBlockBytes);
    const uint8_t* begin = data + done;
    const uint64_t base = input_base + done;
    auto report_a = [&](const uint8_t* after, uint32_t s) {
      on_match(base + static_cast<size_t>(after - begin), s);
    };
    // Lane b starts from the root max_len bytes before its half: the state
    // depends on at most the last max_len bytes, so from `mid` on it is
    // exact. Its matches must wait until lane a's are processed.
    const size_t warm = max_len;
    if (n >= 2 * warm + kMinLaneBytes) {
      const size_t mid = (n + warm) / 2;
      st.deferred.clear();
      auto report_b = [&](const uint8_t* after, uint32_t s) {
        const auto end = static_cast<size_t>(after - begin);
        if (end > mid) st.deferred.push_back({base + end, s});
      };
      state = ScanTwo(state, begin, begin + mid, begin + mid - warm, begin + n,
                      report_a, report_b);
      for (const Hit& hit : st.deferred) on_match(hit.end, hit.code);
    } else {
      state = Scan(state, begin, begin + n, report_a);
    }
    done += n;
  }
  st.pos = input_base + input.size();
  st.code = state;

  const uint64_t frontier = flush ? st.pos : st.pos - depth[Node(state)];
  commit(frontier);
  if (frontier > st.resolved) {
    emit_raw(st.resolved, frontier);
    st.resolved = frontier;
    st.tail_masked = false;
  }
  // Every view handed to `emit` is dead now; keep [resolved, pos).
  if (st.resolved < input_base) {
    pending->erase(0, st.resolved - held_base);
    pending->append(input);
  } else {
    pending->assign(input.substr(st.resolved - input_base));
  }
  if (flush) {
    // A flush ends a segment: nothing matched so far can merge with what
    // comes next.
    st.code = 0;
    st.tail_masked = false;
  }
}

SecretMasker::SecretMasker(const std::vector<std::string>& secrets) {
  const std::vector<std::string> patterns = BuildPatterns(secrets);
  if (!patterns.empty()) automaton_ = Automaton::Build(patterns);
}

SecretMasker::~SecretMasker() = default;

bool SecretMasker::empty() const { return automaton_ == nullptr; }

size_t SecretMasker::max_pattern_bytes() const {
  return automaton_ ? automaton_->max_len : 0;
}

std::string SecretMasker::Mask(std::string_view text) const {
  if (!automaton_) return std::string(text);
  std::string out;
  out.reserve(text.size());
  auto emit = [&out](std::string_view piece) { out.append(piece); };
  StreamState st;
  std::string pending;
  automaton_->Run(st, &pending, text, /*flush=*/true, emit);
  return out;
}

MaskingStream::MaskingStream(std::shared_ptr<const SecretMasker> masker,
                             Sink sink)
    : masker_(std::move(masker)), sink_(std::move(sink)) {
  if (masker_ && masker_->empty()) masker_.reset();
}

void MaskingStream::Write(std::string_view bytes) {
  if (bytes.empty()) return;
  if (!masker_) {
    sink_(bytes);
    return;
  }
  auto emit = [this](std::string_view piece) { sink_(piece); };
  masker_->automaton_->Run(state_, &pending_, bytes, /*flush=*/false, emit);
}

void MaskingStream::Flush() {
  if (!masker_) return;
  auto emit = [this](std::string_view piece) { sink_(piece); };
  masker_->automaton_->Run(state_, &pending_, {}, /*flush=*/true, emit);
}

LineSplitter::LineSplitter(size_t max_line_bytes, Sink sink)
    : max_line_bytes_(std::max<size_t>(max_line_bytes, 1)),
      sink_(std::move(sink)) {
  line_.reserve(max_line_bytes_ + 1);
}

// line_ holds the start of the current line: at most max_line_bytes_ bytes,
// or one more when the extra byte is a '\r' that may yet turn out to be part
// of "\r\n" (so a line of exactly max_line_bytes_ is never cut).
void LineSplitter::Write(std::string_view bytes) {
  const size_t max = max_line_bytes_;
  while (!bytes.empty()) {
    const void* nl = std::memchr(bytes.data(), '\n', bytes.size());
    const bool ended = nl != nullptr;
    std::string_view seg =
        ended ? bytes.substr(0, static_cast<const char*>(nl) - bytes.data())
              : bytes;
    bytes.remove_prefix(ended ? seg.size() + 1 : seg.size());
    if (ended) {
      if (!seg.empty() && seg.back() == '\r') {
        seg.remove_suffix(1);
      } else if (seg.empty() && !line_.empty() && line_.back() == '\r') {
        line_.pop_back();
      }
    }
    // Now every byte of line_ is content: a held '\r' was either dropped
    // above or is followed by more bytes of the line.
    if (!line_.empty()) {
      if (line_.size() > max) {
        sink_(std::string_view(line_).substr(0, max), true);
        line_.erase(0, max);
      }
      const size_t take = std::min(seg.size(), max - line_.size());
      line_.append(seg.substr(0, take));
      seg.remove_prefix(take);
      if (seg.empty()) {
        if (!ended) return;  // line_ <= max: wait for more
        sink_(line_, false);
        line_.clear();
        continue;
      }
      if (!ended && seg == "\r") {
        line_.push_back('\r');  // max + 1: maybe "\r\n"
        return;
      }
      sink_(line_, true);
      line_.clear();
    }
    // From here on, pieces come straight from the input.
    if (ended) {
      while (seg.size() > max) {
        sink_(seg.substr(0, max), true);
        seg.remove_prefix(max);
      }
      sink_(seg, false);
    } else {
      const auto definite = [](std::string_view s) {
        return s.size() - (s.back() == '\r' ? 1 : 0);
      };
      while (!seg.empty() && definite(seg) > max) {
        sink_(seg.substr(0, max), true);
        seg.remove_prefix(max);
      }
      line_.assign(seg);
    }
  }
}

void LineSplitter::Flush() {
  if (line_.empty()) return;
  if (line_.size() > max_line_bytes_) {
    sink_(std::string_view(line_).substr(0, max_line_bytes_), true);
    line_.erase(0, max_line_bytes_);
  }
  sink_(line_, false);
  line_.clear();
}

}  // namespace delegate::logs
