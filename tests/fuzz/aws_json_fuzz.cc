// AWS JSON 1.1 answers and error bodies, and the other AWS documents the
// delegate reads: error answers (ParseAwsError), DescribeTasks, the
// PutLogEvents answer, the container credentials / IMDS document, the ECS
// task metadata, ARNs and RFC 3339 times. Errors from the credentials
// document never carry the secret key.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "aws/credentials.h"
#include "aws/endpoints.h"
#include "aws/json_client.h"
#include "aws/logs_client.h"
#include "aws/task_metadata.h"
#include "executor/ecs/ecs_runtime.h"
#include "fuzz_input.h"

namespace aws = delegate::aws;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  delegate::fuzz::FuzzInput in(data, size);
  const uint8_t mode = in.Byte() % 7;
  const int status = static_cast<int>(in.Range(100, 599));
  const std::string body(in.Rest());
  switch (mode) {
    case 0: {
      aws::AwsError e = aws::ParseAwsError(status, body);
      FUZZ_CHECK(e.http_status == status, "the status changed");
      FUZZ_CHECK(e.code.find('#') == std::string::npos, e.code);
      (void)aws::IsRetryableError(e);
      break;
    }
    case 1: {
      auto states = delegate::ecs::ParseDescribeTasksAnswer(body);
      (void)states;
      break;
    }
    case 2: {
      aws::PutLogEventsResult result;
      std::string token = status % 2 == 0 ? "token" : "";
      const int64_t n = status % 17;
      aws::ReadPutLogEventsAnswer(body, n, result, token);
      FUZZ_CHECK(result.sent == n, "sent");
      FUZZ_CHECK(result.rejected_too_old >= 0 && result.rejected_too_new >= 0,
                 "negative");
      FUZZ_CHECK(result.rejected() <= n, "more rejected than sent");
      break;
    }
    case 3: {
      auto credentials = aws::ParseCredentialsDocument(body, "source");
      if (!credentials.ok()) break;
      FUZZ_CHECK(!credentials->credentials.access_key_id.empty(), "no key id");
      break;
    }
    case 4: {
      auto metadata = aws::ParseTaskMetadata(body, "http://169.254.170.2/v4");
      if (metadata.ok()) {
        FUZZ_CHECK(!metadata->cluster.empty(), "no cluster");
      }
      break;
    }
    case 5: {
      auto arn = aws::ParseArn(body);
      (void)arn;
      break;
    }
    default:
      (void)aws::ParseIso8601(body);
      break;
  }
  return 0;
}
