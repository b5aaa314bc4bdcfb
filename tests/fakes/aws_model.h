// A validator of AWS JSON 1.1 request bodies against a botocore
// service-2.json model (ecs-model/, logs-model/ of the AWS test data): what
// the service's own request validation refuses before it acts. Used by the
// loopback AWS fake for every request, and by tests that check the JSON
// files the project ships (deploy/ecs/*.json).
//
// What is checked, per member, following the input shape of the operation:
//   - JSON types: structure and map (object), list (array), string, integer
//     (32-bit), long (64-bit), boolean, double and float (any number),
//     timestamp (a number: epoch seconds), blob (a base64 string), document
//     (anything); a JSON null counts as absent, as the services read it;
//   - members a structure does not have ("unknown member": AWS JSON 1.1
//     services refuse them with SerializationException);
//   - required members, enums, string lengths (in characters), list and map
//     sizes, number bounds, and that a union sets exactly one member;
//   - patterns, matched against the whole value as the services do (Java's
//     Pattern.matches), with std::regex (ECMAScript). A model pattern that
//     std::regex cannot compile (Java's \p{L} classes) is skipped; see
//     skipped_patterns().
// Values of shapes marked sensitive are never echoed in a problem.
#ifndef DELEGATE_TESTS_FAKES_AWS_MODEL_H_
#define DELEGATE_TESTS_FAKES_AWS_MODEL_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace delegate::testing {

struct ModelProblem {
  enum class Kind {
    // Not JSON, a wrong JSON type, an unknown member: the body cannot be
    // read as the input shape (AWS: 400 SerializationException).
    kSerialization,
    // Readable, but a modelled constraint fails (AWS: a validation error).
    kConstraint,
  };
  Kind kind = Kind::kConstraint;
  // "containerDefinitions[0].linuxParameters.capabilities.add[1]: value
  // 'FOO' is not one of ALL, AUDIT_CONTROL, ...": the path first, then what
  // is wrong. Problems of the body as a whole start with "(body)".
  std::string text;
};

struct AwsModelData;  // the indexed model, in aws_model.cc

// Immutable once loaded; copies share the model. Thread-safe.
class AwsModel {
 public:
  // Reads and indexes a botocore service-2.json. Fails with the path and
  // what is wrong when the file is missing, is not JSON or is not a model.
  static absl::StatusOr<AwsModel> Load(const std::string& service2_json_path);

  // Every problem of `json` (a JSON text) against the input shape of
  // `operation` ("RegisterTaskDefinition"), in document order; empty when
  // valid. An operation the model does not have is one problem.
  std::vector<std::string> ValidateInput(std::string_view operation,
                                         std::string_view json) const;
  // The same, with each problem's kind.
  std::vector<ModelProblem> Check(std::string_view operation,
                                  std::string_view json) const;

  bool HasOperation(std::string_view operation) const;
  std::vector<std::string> operations() const;  // sorted
  // metadata.targetPrefix: "AmazonEC2ContainerServiceV20141113".
  std::string target_prefix() const;
  // metadata.signingName, else metadata.endpointPrefix: "ecs", "logs".
  std::string signing_name() const;
  // "SHAPE: PATTERN (why)" for each model pattern std::regex could not
  // compile, and which is therefore not checked.
  std::vector<std::string> skipped_patterns() const;

 private:
  explicit AwsModel(std::shared_ptr<const AwsModelData> data);
  std::shared_ptr<const AwsModelData> data_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_AWS_MODEL_H_
