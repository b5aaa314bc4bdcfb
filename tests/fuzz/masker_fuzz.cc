// The secret masker, checked, not just run: whatever the text and however
// a stream cuts it into writes, the masked output never contains a secret
// (3 bytes or more), nor its base64 (standard or URL-safe, inside a longer
// base64 text at any alignment), nor its URL encoding. The text is the
// input with secrets inserted in those forms, so that the fuzzer need not
// find them by chance; a stream and a one-shot Mask give the same bytes.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/escaping.h"
#include "fuzz_input.h"
#include "logs/masker.h"

namespace {

using delegate::logs::MaskingStream;
using delegate::logs::SecretMasker;

std::string Base64(std::string_view bytes, bool url) {
  std::string out;
  if (url) {
    absl::WebSafeBase64Escape(absl::string_view(bytes.data(), bytes.size()),
                              &out);
  } else {
    absl::Base64Escape(absl::string_view(bytes.data(), bytes.size()), &out);
  }
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

std::string UrlEncoded(std::string_view bytes) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' ||
        c == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// The part of base64(prefix + secret + suffix) that only the secret
// decides, for a prefix of `align` bytes.
std::string Base64Core(std::string_view secret, size_t align, bool url) {
  const std::string encoded =
      Base64(std::string(align, 'x') + std::string(secret) + "yy", url);
  const size_t first = (8 * align + 5) / 6;
  const size_t last = 8 * (align + secret.size()) / 6;
  return last > first ? encoded.substr(first, last - first) : "";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  std::vector<std::string> secrets;
  for (int n = in.Byte() % 4 + 1; n > 0; --n) {
    std::string s = in.String(40);
    // A secret made of the mask's own characters cannot be kept out of a
    // masked text.
    if (s.find('*') == std::string::npos) secrets.push_back(std::move(s));
  }
  if (secrets.empty()) return 0;
  struct Insert {
    size_t at;
    size_t secret;
    uint8_t form;
    size_t align;
  };
  std::vector<Insert> inserts;
  for (int n = in.Byte() % 6; n > 0; --n) {
    inserts.push_back({in.Range(0, 1 << 16), in.Byte() % secrets.size(),
                       static_cast<uint8_t>(in.Byte() % 4),
                       static_cast<size_t>(in.Byte() % 3)});
  }
  const size_t first_write = in.Range(1, 97);
  std::string text(in.Rest());
  for (const Insert& i : inserts) {
    const std::string& s = secrets[i.secret];
    std::string piece;
    switch (i.form) {
      case 0:
        piece = s;
        break;
      case 1:
      case 2:
        piece = Base64(std::string(i.align, 'q') + s + "zz", i.form == 2);
        break;
      default:
        piece = UrlEncoded(s);
        break;
    }
    text.insert(i.at % (text.size() + 1), piece);
  }

  auto masker = std::make_shared<const SecretMasker>(secrets);
  const std::string masked = masker->Mask(text);

  std::string streamed;
  MaskingStream stream(masker, [&](std::string_view b) { streamed.append(b); });
  for (size_t pos = 0, n = first_write; pos < text.size();
       pos += n, n = n * 3 % 89 + 1) {
    stream.Write(std::string_view(text).substr(pos, n));
  }
  stream.Flush();
  FUZZ_CHECK(streamed == masked, "a stream masks differently from Mask");

  for (const std::string& s : secrets) {
    if (s.size() < SecretMasker::kMinPatternBytes) continue;
    FUZZ_CHECK(masked.find(s) == std::string::npos, "a secret got through");
    for (bool url : {false, true}) {
      for (size_t align = 0; align < 3; ++align) {
        const std::string core = Base64Core(s, align, url);
        if (core.size() < 4) continue;
        FUZZ_CHECK(masked.find(core) == std::string::npos,
                   "a secret's base64 got through");
      }
    }
    const std::string url = UrlEncoded(s);
    if (url != s && url.size() >= 4) {
      FUZZ_CHECK(masked.find(url) == std::string::npos,
                 "a secret's URL encoding got through");
    }
  }
  return 0;
}
