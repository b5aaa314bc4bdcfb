// The Docker Engine's JSON answers (and the tar archive of GET /archive),
// as whoever answers on DOCKER_HOST may send them.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "executor/docker/docker_answers.h"
#include "fuzz_input.h"

namespace docker = delegate::docker;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  const uint8_t mode = in.Byte() % 9;
  const int status = static_cast<int>(in.Range(100, 599));
  const size_t max_bytes = in.Range(0, 4096);
  std::string_view body = in.Rest();
  switch (mode) {
    case 0: {
      absl::Status s = docker::DaemonError(status, body, "call");
      FUZZ_CHECK(!s.ok(), "an error that is not one");
      FUZZ_CHECK(!docker::DaemonMessage(status, body).empty(), "no words");
      (void)docker::PullErrorCode(body);
      break;
    }
    case 1:
      (void)docker::ParseApiVersion(docker::VersionAnswerApiVersion(body));
      (void)docker::ParseApiVersion(body);
      break;
    case 2: {
      // The pull stream, a line at a time.
      size_t start = 0;
      for (size_t nl; (nl = body.find('\n', start)) != std::string_view::npos;
           start = nl + 1) {
        (void)docker::ParsePullLine(body.substr(start, nl - start));
      }
      (void)docker::ParsePullLine(body.substr(start));
      break;
    }
    case 3:
      (void)docker::ParseWaitAnswer(body, "wait");
      (void)docker::EventsHaveOom(body);  // GET /events: JSON lines
      break;
    case 4:
      (void)docker::ParseInspectAnswer(body, "inspect");
      break;
    case 5:
      (void)docker::ParseExecInspectAnswer(body, "exec");
      break;
    case 6:
      (void)docker::ParseIdAnswer(body, "create");
      break;
    case 7:
      (void)docker::ParseListAnswer(body, "list",
                                    status % 2 ? "Volumes" : nullptr,
                                    status % 2 ? "Name" : "Id");
      (void)docker::ParseListedAnswer(
          body, "list", static_cast<docker::ObjectKind>(status % 3));
      break;
    default: {
      auto file = docker::ParseArchiveMember(body, "read", max_bytes);
      if (file.ok()) FUZZ_CHECK(file->size() <= max_bytes, "over max_bytes");
      break;
    }
  }
  return 0;
}
