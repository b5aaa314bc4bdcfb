#include "logs/masker.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace delegate::logs {
namespace {

#if defined(__SANITIZE_ADDRESS__)
#define MASKER_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MASKER_TEST_ASAN 1
#endif
#endif

const std::string kM(kMask);

std::shared_ptr<const SecretMasker> MakeMasker(
    std::vector<std::string> secrets) {
  return std::make_shared<const SecretMasker>(secrets);
}

// Written independently of the implementation: standard or URL-safe base64,
// with or without '=' padding.
std::string B64(std::string_view in, bool url = false, bool pad = false) {
  const char* alphabet =
      url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
          : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t bits = 0;
  int nbits = 0;
  for (const char c : in) {
    bits = (bits << 8) | static_cast<uint8_t>(c);
    nbits += 8;
    while (nbits >= 6) {
      nbits -= 6;
      out.push_back(alphabet[(bits >> nbits) & 63]);
    }
  }
  if (nbits > 0) out.push_back(alphabet[(bits << (6 - nbits)) & 63]);
  while (pad && out.size() % 4 != 0) out.push_back('=');
  return out;
}

// The characters of B64(prefix + secret + suffix) whose bits all come from
// the secret.
std::string SecretOnlyRun(std::string_view encoded, size_t prefix_bytes,
                          size_t secret_bytes) {
  const size_t first = (8 * prefix_bytes + 5) / 6;
  const size_t last = 8 * (prefix_bytes + secret_bytes) / 6;
  return std::string(encoded.substr(first, last - first));
}

// Feeds `text` to a MaskingStream cut at `cuts` (sorted offsets) and
// returns everything the sink received, Flush included.
std::string StreamMask(std::shared_ptr<const SecretMasker> masker,
                       std::string_view text, const std::vector<size_t>& cuts) {
  std::string out;
  MaskingStream stream(std::move(masker),
                       [&out](std::string_view piece) { out.append(piece); });
  size_t at = 0;
  for (const size_t cut : cuts) {
    stream.Write(text.substr(at, cut - at));
    at = cut;
  }
  stream.Write(text.substr(at));
  stream.Flush();
  return out;
}

std::string ByteByByte(std::shared_ptr<const SecretMasker> masker,
                       std::string_view text) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < text.size(); ++i) cuts.push_back(i);
  return StreamMask(std::move(masker), text, cuts);
}

// Naive reference for secrets whose derived patterns cannot occur in the
// test text: each value and each of its lines (>= 3 bytes) is searched at
// every offset; each maximal run of covered bytes becomes one kMask.
std::string ReferenceMask(const std::vector<std::string>& secrets,
                          std::string_view text) {
  std::vector<std::string> patterns;
  for (const std::string& s : secrets) {
    if (s.size() < 3) continue;
    patterns.push_back(s);
    size_t start = 0;
    while (start <= s.size()) {
      size_t nl = s.find('\n', start);
      if (nl == std::string::npos) nl = s.size();
      std::string line = s.substr(start, nl - start);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.size() >= 3) patterns.push_back(line);
      start = nl + 1;
    }
  }
  std::vector<bool> covered(text.size(), false);
  for (const std::string& p : patterns) {
    for (size_t pos = text.find(p); pos != std::string_view::npos;
         pos = text.find(p, pos + 1)) {
      std::fill(covered.begin() + pos, covered.begin() + pos + p.size(), true);
    }
  }
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!covered[i]) {
      out.push_back(text[i]);
    } else if (i == 0 || !covered[i - 1]) {
      out.append(kMask);
    }
  }
  return out;
}

TEST(SecretMaskerTest, TextWithoutSecretIsUnchangedByteForByte) {
  auto masker = MakeMasker({"hunter2-password", "tok_ABCDEF123456"});
  std::string text;
  for (int i = 0; i < 4; ++i) {
    for (int b = 0; b < 256; ++b) text.push_back(static_cast<char>(b));
  }
  text += "hunter2-passwor\r\nd tok_ABCDEF12345 \xff\xfe\n";
  EXPECT_EQ(masker->Mask(text), text);
  EXPECT_EQ(ByteByByte(masker, text), text);
  EXPECT_EQ(StreamMask(masker, text, {7, 300, 301}), text);
}

TEST(SecretMaskerTest, MasksEveryOccurrence) {
  auto masker = MakeMasker({"s3cr3t-value"});
  EXPECT_EQ(masker->Mask("pw=s3cr3t-value"), "pw=" + kM);
  EXPECT_EQ(masker->Mask("s3cr3t-value and s3cr3t-value."),
            kM + " and " + kM + ".");
  EXPECT_EQ(masker->Mask("s3cr3t-values3cr3t-value"), kM);
  EXPECT_EQ(masker->Mask(""), "");
}

TEST(SecretMaskerTest, SecretsShorterThanThreeBytesAreNotMasked) {
  auto masker = MakeMasker({"a", "ab", ""});
  EXPECT_TRUE(masker->empty());
  EXPECT_EQ(masker->max_pattern_bytes(), 0u);
  EXPECT_EQ(masker->Mask("a ab abc"), "a ab abc");
  EXPECT_EQ(StreamMask(masker, "a ab abc", {1, 4}), "a ab abc");

  auto three = MakeMasker({"xyz", "q"});
  EXPECT_FALSE(three->empty());
  EXPECT_EQ(three->Mask("q xyz q"), "q " + kM + " q");
}

TEST(SecretMaskerTest, OverlappingSecretsLeaveNoByteVisible) {
  auto masker = MakeMasker({"abcd", "cdef"});
  EXPECT_EQ(masker->Mask("xx abcdef yy"), "xx " + kM + " yy");
  EXPECT_EQ(masker->Mask("cdefabcd"), kM);  // adjacent
  EXPECT_EQ(masker->Mask("abcdcdef"), kM);

  // A short secret inside a longer one that only later turns out to match.
  auto nested = MakeMasker({"bcd", "abcdefg"});
  EXPECT_EQ(nested->Mask("abcdefg"), kM);
  EXPECT_EQ(nested->Mask("abcdefX"), "a" + kM + "efX");
  EXPECT_EQ(ByteByByte(nested, "abcdefg|abcdefX"), kM + "|a" + kM + "efX");

  // A chain of overlaps longer than any pattern is still one mask.
  auto chain = MakeMasker({"abab", "baba"});
  EXPECT_EQ(chain->Mask("<ababababababababab>"), "<" + kM + ">");
}

TEST(MaskingStreamTest, SecretSplitAtEveryPointAcrossTwoWrites) {
  const std::string secret = "Zq9!xT-77@secret";
  auto masker = MakeMasker({secret, "other-secret-value"});
  const std::string text = "login ok\ntoken: " + secret + " end\n";
  const std::string expected = "login ok\ntoken: " + kM + " end\n";
  ASSERT_EQ(masker->Mask(text), expected);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    SCOPED_TRACE(cut);
    EXPECT_EQ(StreamMask(masker, text, {cut}), expected);
  }
  // And at every pair of cut points inside the secret.
  const size_t at = text.find(secret);
  for (size_t i = at; i <= at + secret.size(); ++i) {
    for (size_t j = i; j <= at + secret.size(); ++j) {
      EXPECT_EQ(StreamMask(masker, text, {i, j}), expected) << i << "," << j;
    }
  }
  EXPECT_EQ(ByteByByte(masker, text), expected);
}

TEST(MaskingStreamTest, SecretSplitAcrossLinesThroughLineSplitter) {
  const std::string secret = "first-half\nsecond-half";
  auto masker = MakeMasker({secret});
  std::vector<std::string> lines;
  LineSplitter splitter(1024, [&](std::string_view line, bool partial) {
    EXPECT_FALSE(partial);
    lines.emplace_back(line);
  });
  MaskingStream stream(masker,
                       [&](std::string_view bytes) { splitter.Write(bytes); });
  stream.Write("key: first-");
  stream.Write("half\nsec");
  stream.Write("ond-half\ndone\n");
  stream.Flush();
  splitter.Flush();
  EXPECT_EQ(lines, (std::vector<std::string>{"key: " + kM, "done"}));
}

TEST(SecretMaskerTest, MultiLineSecretPrintedWholeOrLineByLine) {
  const std::string key =
      "-----BEGIN KEY-----\r\nMIIEvQIBADANBgkqhkiG9w0B\r\nAQEFAASCBKcwggSj\r\n"
      "-----END KEY-----";
  auto masker = MakeMasker({key});
  const std::vector<std::string> lines = {
      "-----BEGIN KEY-----", "MIIEvQIBADANBgkqhkiG9w0B", "AQEFAASCBKcwggSj",
      "-----END KEY-----"};

  EXPECT_EQ(masker->Mask("key=" + key + ";"), "key=" + kM + ";");

  std::string by_line;
  for (const std::string& line : lines) by_line += "> " + line + "\n";
  const std::string out = masker->Mask(by_line);
  EXPECT_EQ(out, "> " + kM + "\n> " + kM + "\n> " + kM + "\n> " + kM + "\n");
  EXPECT_EQ(ByteByByte(masker, by_line), out);

  // Printed with '\n' instead of the secret's "\r\n": every line is masked.
  std::string unix_form;
  for (const std::string& line : lines) unix_form += line + "\n";
  const std::string unix_out = masker->Mask(unix_form);
  for (const std::string& line : lines) {
    EXPECT_EQ(unix_out.find(line), std::string::npos) << line;
  }
}

// What a user sees when a job base64-encodes a credential, e.g.
// `echo -n "user:$SECRET" | base64`.
TEST(SecretMaskerTest, Base64AtEveryAlignmentIsMasked) {
  const std::string secret = "Pa55w0rd!Q7#zv?~long-enough";
  auto masker = MakeMasker({secret});
  const std::vector<std::string> prefixes = {
      "", "u", "xy:", "user:", "ab", "abcd", "user@host:", "x:"};
  const std::vector<std::string> suffixes = {"", "\n", ":tail", "!"};

  // Every pattern the masker should derive, recomputed here from scratch.
  std::vector<std::string> derived;
  for (const bool url : {false, true}) {
    for (size_t align = 0; align < 3; ++align) {
      derived.push_back(
          SecretOnlyRun(B64(std::string(align, 'A') + secret + "ZZZ", url),
                        align, secret.size()));
    }
  }

  for (const bool url : {false, true}) {
    for (const std::string& prefix : prefixes) {
      for (const std::string& suffix : suffixes) {
        for (const bool pad : {false, true}) {
          const std::string blob = B64(prefix + secret + suffix, url, pad);
          SCOPED_TRACE("prefix='" + prefix + "' suffix='" + suffix +
                       "' url=" + std::to_string(url) + " blob=" + blob);
          const std::string run =
              SecretOnlyRun(blob, prefix.size(), secret.size());
          ASSERT_NE(blob.find(run), std::string::npos);
          const std::string line = "AUTH=" + blob + "\n";
          const std::string out = masker->Mask(line);
          EXPECT_NE(out, line);
          EXPECT_NE(out.find(kM), std::string::npos);
          // No 4 consecutive characters that encode only secret bits
          // survive; what remains next to the mask are at most the two
          // characters shared with neighbouring bytes.
          for (size_t i = 0; i + 4 <= run.size(); ++i) {
            ASSERT_EQ(out.find(run.substr(i, 4)), std::string::npos)
                << "window " << run.substr(i, 4) << " in " << out;
          }
          for (const std::string& d : derived) {
            EXPECT_EQ(out.find(d), std::string::npos) << d;
          }
          // The standard encoding of the secret's middle, wherever the
          // blob contains it verbatim.
          for (size_t m = 0; m < 3; ++m) {
            if ((prefix.size() + m) % 3 != 0) continue;
            const std::string middle = B64(secret.substr(m, 15), url);
            ASSERT_NE(blob.find(middle), std::string::npos);
            EXPECT_EQ(out.find(middle), std::string::npos);
          }
          EXPECT_EQ(ByteByByte(masker, line), out);
        }
      }
    }
  }
}

TEST(SecretMaskerTest, UrlEncodedSecretIsMasked) {
  const std::string secret = "p@ss w0rd/+&=?~";
  auto masker = MakeMasker({secret});
  const std::string upper = "p%40ss%20w0rd%2F%2B%26%3D%3F~";
  const std::string lower = "p%40ss%20w0rd%2f%2b%26%3d%3f~";
  const std::string form = "p%40ss+w0rd%2F%2B%26%3D%3F~";
  for (const std::string& enc : {upper, lower, form}) {
    const std::string url =
        "GET https://host/login?user=bob&pw=" + enc + "&x=1";
    EXPECT_EQ(masker->Mask(url),
              "GET https://host/login?user=bob&pw=" + kM + "&x=1")
        << enc;
  }
}

TEST(SecretMaskerTest, JsonEscapedSecretIsMasked) {
  const std::string secret = "quote\"back\\slash\ttab";
  auto masker = MakeMasker({secret});
  EXPECT_EQ(masker->Mask(R"({"password":"quote\"back\\slash\ttab"})"),
            R"({"password":")" + kM + R"("})");
}

TEST(MaskingStreamTest, NullOrEmptyMaskerPassesBytesThrough) {
  for (auto masker :
       {std::shared_ptr<const SecretMasker>(), MakeMasker({"ab"})}) {
    std::vector<std::string_view> pieces;
    MaskingStream stream(masker,
                         [&](std::string_view p) { pieces.push_back(p); });
    const std::string text = "no secrets here ab\n";
    stream.Write(text);
    stream.Flush();
    ASSERT_EQ(pieces.size(), 1u);
    EXPECT_EQ(pieces[0].data(), text.data());  // not copied
    EXPECT_EQ(pieces[0].size(), text.size());
  }
}

TEST(MaskingStreamTest, HoldsBackOnlyWhatCouldStillBecomeASecret) {
  const std::string secret = "abcabdabcabe";
  auto masker = MakeMasker({secret, "zzz-other"});
  const size_t cap = masker->max_pattern_bytes() - 1;
  std::mt19937 rng(7);
  // Text made of secret prefixes keeps the automaton deep.
  std::string text;
  while (text.size() < 20000) {
    text += secret.substr(
        0, std::uniform_int_distribution<size_t>(1, secret.size() - 1)(rng));
    if (rng() % 4 == 0) text += "zzz-othe";
  }
  size_t emitted = 0;
  MaskingStream stream(masker,
                       [&](std::string_view p) { emitted += p.size(); });
  size_t written = 0;
  while (written < text.size()) {
    const size_t n = std::min<size_t>(rng() % 40, text.size() - written);
    stream.Write(std::string_view(text).substr(written, n));
    written += n;
    ASSERT_LE(written - emitted, cap) << written;
  }
  // A plain line with no partial secret at its end is emitted at once.
  stream.Write("\nplain line\n");
  EXPECT_EQ(emitted, written + 12);
  stream.Flush();
  EXPECT_EQ(emitted, written + 12);
}

TEST(MaskingStreamTest, FlushEmitsHeldPrefixAndStartsAfresh) {
  auto masker = MakeMasker({"secret-token"});
  std::string out;
  MaskingStream stream(masker, [&](std::string_view p) { out.append(p); });
  stream.Write("x secret-to");
  EXPECT_EQ(out, "x ");
  stream.Flush();
  EXPECT_EQ(out, "x secret-to");
  stream.Write("ken secret-token\n");
  stream.Flush();
  EXPECT_EQ(out, "x secret-token " + kM + "\n");
}

TEST(MaskingStreamTest, RandomSplitsMatchMaskOfWholeStream) {
  const std::vector<std::string> secrets = {
      "abcab", "bcabca", "cab\ncabb", "aaab", "ab\r\nbca", "ccc", "x"};
  auto masker = MakeMasker(secrets);
  std::mt19937 rng(12345);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string text;
    const size_t len = rng() % 200;
    while (text.size() < len) {
      if (rng() % 8 == 0) {
        text += secrets[rng() % secrets.size()];
      } else {
        text.push_back("abc\n\r"[rng() % 5]);
      }
    }
    const std::string whole = masker->Mask(text);
    ASSERT_EQ(whole, ReferenceMask(secrets, text)) << text;
    std::vector<size_t> cuts;
    for (size_t i = 1; i < text.size(); ++i) {
      if (rng() % 4 == 0) cuts.push_back(i);
    }
    ASSERT_EQ(StreamMask(masker, text, cuts), whole) << text;
  }
}

// Long and many secrets: most automaton states have no dense row.
TEST(MaskingStreamTest, ManyLongSecretsMatchReference) {
  std::mt19937 rng(99);
  std::vector<std::string> secrets;
  for (int i = 0; i < 60; ++i) {
    std::string s;
    const size_t len = 50 + rng() % 300;
    while (s.size() < len) s.push_back("abcd"[rng() % 4]);
    secrets.push_back(s);
  }
  // Deep in a long run of 'a' (a sparse state) a 'd' falls back to the
  // short pattern "aaad", whose state is dense.
  secrets.push_back(std::string(300, 'a') + "b");
  secrets.push_back("aaad");
  auto masker = MakeMasker(secrets);
  for (int iter = 0; iter < 300; ++iter) {
    std::string text;
    const size_t len = rng() % 5000;
    while (text.size() < len) {
      if (rng() % 64 == 0) {
        const std::string& s = secrets[rng() % secrets.size()];
        // Sometimes only a prefix or a suffix: a near miss.
        switch (rng() % 4) {
          case 3:
            text += std::string(rng() % 400, 'a') + "dbd";
            break;
          case 0:
            text += s;
            break;
          case 1:
            text += s.substr(0, s.size() - 1);
            break;
          default:
            text += s.substr(1);
        }
      } else {
        text.push_back("abcd "[rng() % 5]);
      }
    }
    const std::string whole = masker->Mask(text);
    ASSERT_EQ(whole, ReferenceMask(secrets, text));
    for (const unsigned every : {97u, 1500u}) {
      std::vector<size_t> cuts;
      for (size_t i = 1; i < text.size(); ++i) {
        if (rng() % every == 0) cuts.push_back(i);
      }
      ASSERT_EQ(StreamMask(masker, text, cuts), whole);
    }
  }
}

// One long Write is scanned in two halves and in blocks; a secret at any
// offset (across the middle, the block edge or both) is still masked.
TEST(MaskingStreamTest, SecretAtEveryOffsetOfOneLongWrite) {
  const std::vector<std::string> secrets = {"cabbacab", "abcab", "bbbbbbbbbc"};
  auto masker = MakeMasker(secrets);
  std::mt19937 rng(5);
  for (const size_t len :
       {size_t{200}, size_t{290}, size_t{301}, size_t{700}}) {
    std::string base;
    for (size_t i = 0; i < len; ++i) base.push_back("abc "[rng() % 4]);
    for (const std::string& secret : secrets) {
      for (size_t at = 0; at + secret.size() <= len; ++at) {
        std::string text = base;
        text.replace(at, secret.size(), secret);
        const std::string expected = ReferenceMask(secrets, text);
        ASSERT_EQ(masker->Mask(text), expected) << len << " " << at;
        ASSERT_EQ(StreamMask(masker, text, {len / 3}), expected);
      }
    }
  }
}

TEST(MaskingStreamTest, WritesLargerThanAScanBlockMatchReference) {
  const std::vector<std::string> secrets = {"abcabcab", "cabbac",
                                            "bbbbbbbbbbbb"};
  auto masker = MakeMasker(secrets);
  std::mt19937 rng(11);
  std::string text;
  while (text.size() < 3 * (1 << 18) + 1000) {
    if (rng() % 50 == 0) {
      text += secrets[rng() % secrets.size()];
    } else {
      text.push_back("abc\n"[rng() % 4]);
    }
  }
  const std::string expected = ReferenceMask(secrets, text);
  EXPECT_EQ(masker->Mask(text), expected);
  EXPECT_EQ(StreamMask(masker, text, {1 << 18, (1 << 18) + 5, 700000}),
            expected);
}

struct Piece {
  std::string text;
  bool partial;
  bool operator==(const Piece&) const = default;
};

std::vector<Piece> Split(size_t max, const std::vector<std::string>& writes,
                         bool flush = true) {
  std::vector<Piece> out;
  LineSplitter splitter(max, [&](std::string_view line, bool partial) {
    EXPECT_LE(line.size(), max);
    out.push_back({std::string(line), partial});
  });
  for (const std::string& w : writes) splitter.Write(w);
  if (flush) splitter.Flush();
  return out;
}

TEST(LineSplitterTest, SplitsOnNewlineAndDropsCarriageReturn) {
  EXPECT_EQ(Split(100, {"a\nbb\r\n\nccc"}),
            (std::vector<Piece>{
                {"a", false}, {"bb", false}, {"", false}, {"ccc", false}}));
  EXPECT_EQ(Split(100, {"x\r", "\ny\r", "z\n"}),
            (std::vector<Piece>{{"x", false}, {"y\rz", false}}));
  EXPECT_EQ(Split(100, {"no newline"}, /*flush=*/false),
            (std::vector<Piece>{}));
  EXPECT_EQ(Split(100, {"", "\n", ""}), (std::vector<Piece>{{"", false}}));
  EXPECT_EQ(Split(100, {"progress 10%\r20%\r"}),
            (std::vector<Piece>{{"progress 10%\r20%\r", false}}));
}

TEST(LineSplitterTest, CutsLongLinesIntoPartialPieces) {
  EXPECT_EQ(
      Split(4, {"abcdefghij\n"}),
      (std::vector<Piece>{{"abcd", true}, {"efgh", true}, {"ij", false}}));
  // Exactly max bytes is one whole line, also when its "\r\n" is split.
  EXPECT_EQ(Split(4, {"abcd\n"}), (std::vector<Piece>{{"abcd", false}}));
  EXPECT_EQ(Split(4, {"abcd\r", "\n"}), (std::vector<Piece>{{"abcd", false}}));
  EXPECT_EQ(Split(4, {"ab", "cd", "\r", "\n"}),
            (std::vector<Piece>{{"abcd", false}}));
  EXPECT_EQ(Split(4, {"abcd\r", "x\n"}),
            (std::vector<Piece>{{"abcd", true}, {"\rx", false}}));
  EXPECT_EQ(Split(4, {"abcd\r", "\r\n"}),
            (std::vector<Piece>{{"abcd", true}, {"\r", false}}));
  EXPECT_EQ(Split(4, {"abcdefgh\n"}),
            (std::vector<Piece>{{"abcd", true}, {"efgh", false}}));
  EXPECT_EQ(Split(4, {"abcdefghi"}),
            (std::vector<Piece>{{"abcd", true}, {"efgh", true}, {"i", false}}));
  EXPECT_EQ(Split(4, {"abcd\r"}),
            (std::vector<Piece>{{"abcd", true}, {"\r", false}}));
}

TEST(LineSplitterTest, SameLinesForEverySplitOfTheInput) {
  const std::string text =
      "short\nexactly8\r\nthis line is long\r\n\r\n\rx\r\r\nabcdefgh\rtail";
  const std::vector<Piece> whole = Split(8, {text});
  for (size_t i = 0; i <= text.size(); ++i) {
    for (size_t j = i; j <= text.size(); ++j) {
      ASSERT_EQ(
          Split(8, {text.substr(0, i), text.substr(i, j - i), text.substr(j)}),
          whole)
          << i << "," << j;
    }
  }
  std::vector<std::string> bytes;
  for (const char c : text) bytes.emplace_back(1, c);
  EXPECT_EQ(Split(8, bytes), whole);
}

TEST(LineSplitterTest, WholeLinesInTheInputAreNotCopied) {
  const std::string text = "first line\nsecond line\n";
  std::vector<const char*> starts;
  LineSplitter splitter(
      64, [&](std::string_view line, bool) { starts.push_back(line.data()); });
  splitter.Write(text);
  ASSERT_EQ(starts.size(), 2u);
  EXPECT_EQ(starts[0], text.data());
  EXPECT_EQ(starts[1], text.data() + 11);
}

TEST(LineSplitterTest, MemoryBoundedByMaxLineBytes) {
  size_t delivered = 0;
  LineSplitter splitter(1000, [&](std::string_view line, bool partial) {
    EXPECT_TRUE(partial);
    EXPECT_EQ(line.size(), 1000u);
    delivered += line.size();
  });
  const std::string chunk(777, 'x');
  size_t written = 0;
  for (int i = 0; i < 1000; ++i) {
    splitter.Write(chunk);
    written += chunk.size();
    ASSERT_LE(written - delivered, 1000u);
  }
}

long PeakRssKb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

TEST(MaskingStreamTest, HundredMegabyteStreamKeepsMemoryBounded) {
#ifdef MASKER_TEST_ASAN
  GTEST_SKIP() << "RSS is not meaningful under AddressSanitizer";
#endif
  const std::vector<std::string> secrets = {
      "ghp_16C7e42F292c6912E7710c838347Ae", "hunter2-but-longer",
      "multi\nline-secret-value"};
  auto masker = MakeMasker(secrets);

  // One 64 KiB chunk of log-like text, a secret split across its ends, and
  // a stretch without any newline (a long line cut into pieces).
  std::string chunk;
  while (chunk.size() < 24 * 1024) {
    chunk += "2024-01-01T00:00:00Z INFO step running, token=";
    chunk += secrets[chunk.size() % 3];
    chunk += " ok\n";
  }
  chunk += std::string(64 * 1024 - chunk.size() - 10, 'y');
  chunk += "hunter2-bu";  // continues in the next chunk
  ASSERT_EQ(chunk.size(), 64u * 1024);
  const std::string next_start = "t-longer\n";

  {
    std::ofstream clear("/proc/self/clear_refs");
    if (!clear) GTEST_SKIP() << "cannot reset VmHWM";
    clear << "5";
  }
  const long before = PeakRssKb();
  ASSERT_GT(before, 0);

  size_t lines = 0;
  size_t partial = 0;
  size_t bytes = 0;
  bool leaked = false;
  LineSplitter splitter(16 * 1024, [&](std::string_view line, bool is_partial) {
    ++lines;
    partial += is_partial;
    bytes += line.size();
    if (line.find("hunter2") != std::string_view::npos) leaked = true;
  });
  MaskingStream stream(masker, [&](std::string_view b) { splitter.Write(b); });
  size_t total = 0;
  std::string buf = chunk;
  while (total < 100u * 1024 * 1024) {
    stream.Write(buf);
    total += buf.size();
    buf.replace(0, next_start.size(), next_start);
  }
  stream.Write(next_start);  // completes the secret split off the last chunk
  stream.Flush();
  splitter.Flush();
  const long after = PeakRssKb();

  EXPECT_FALSE(leaked);
  EXPECT_GT(lines, 400000u);
  EXPECT_GT(partial, 0u);
  EXPECT_GT(bytes, 80u * 1024 * 1024);
  EXPECT_LT(after - before, 32 * 1024)
      << "VmHWM grew by " << after - before << " kB";
}

}  // namespace
}  // namespace delegate::logs
