#include "http/tls_config.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace delegate {
namespace {

bool Readable(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         access(path.c_str(), R_OK) == 0;
}

}  // namespace

absl::StatusOr<http::TlsOptions> TlsFromConfig(const DelegateConfig& config) {
  http::TlsOptions tls;
  if (!config.certs_dir.empty()) {
    DIR* dir = opendir(config.certs_dir.c_str());
    if (dir == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("HARNESS_CERTS_DIR: cannot read directory ",
                       config.certs_dir, ": ", strerror(errno)));
    }
    std::vector<std::string> files;
    while (dirent* e = readdir(dir)) {
      std::string name = e->d_name;
      if (name.empty() || name[0] == '.') continue;
      std::string path = absl::StrCat(config.certs_dir, "/", name);
      if (Readable(path)) files.push_back(path);
    }
    closedir(dir);
    std::sort(files.begin(), files.end());
    tls.extra_ca_files = std::move(files);
  }
  for (const auto& [var, path] :
       {std::pair{"HARNESS_CLIENT_CERT_FILE", &config.client_cert_file},
        std::pair{"HARNESS_CLIENT_KEY_FILE", &config.client_key_file}}) {
    if (!path->empty() && !Readable(*path)) {
      return absl::FailedPreconditionError(absl::StrCat(
          var, ": cannot read ", *path, "; give a readable PEM file"));
    }
  }
  tls.client_cert = config.client_cert_file;
  tls.client_key = config.client_key_file;
  return tls;
}

}  // namespace delegate
