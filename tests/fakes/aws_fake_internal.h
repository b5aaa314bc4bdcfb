// The state of the loopback AWS fake, shared by its parts: aws_fake.cc
// (HTTP, SigV4, credentials and metadata endpoints, inspection),
// aws_fake_ecs.cc (ECS operations and the task lifecycle),
// aws_fake_logs.cc (CloudWatch Logs) and aws_fake_docker.cc (tasks whose
// containers run on a Docker Engine). Not for tests: they use aws_fake.h.
#ifndef DELEGATE_TESTS_FAKES_AWS_FAKE_INTERNAL_H_
#define DELEGATE_TESTS_FAKES_AWS_FAKE_INTERNAL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "executor/docker/docker_client.h"
#include "http/http_server.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "tests/fakes/aws_fake.h"
#include "tests/fakes/aws_model.h"

namespace delegate::testing::aws_fake {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// An answer to one operation: 200 with a JSON body, or an AWS error.
struct Reply {
  int status = 200;
  std::string body = "{}";
  std::string code;  // the __type of an error
  std::string message;
};
Reply Error(int status, std::string code, std::string message);
// 400 ClientException / InvalidParameterException, the codes ECS uses for a
// request it will not act on.
Reply ClientError(std::string message);
Reply InvalidParameter(std::string message);

// An answer that is a JSON object; `members` writes what is in it.
std::string Answer(const std::function<void(JsonWriter&)>& members);
Reply Ok(const std::function<void(JsonWriter&)>& members);

// Offset pagination with opaque tokens: [*begin, *end) of `total` items, by
// the request's nextToken and its `limit_member` (at most `max_allowed`, the
// default); InvalidParameterException for a bad token or limit.
std::optional<Reply> PageRange(const rapidjson::Value& body, size_t total,
                               const char* limit_member, int max_allowed,
                               size_t* begin, size_t* end);
std::string PageToken(size_t offset);
// {key: [a page of items], nextToken}.
Reply PagedList(const rapidjson::Value& body,
                const std::vector<std::string>& items, const char* key,
                const char* limit_member, int max_allowed);

// JSON writing and reading shorthands.
void Put(JsonWriter& w, std::string_view key, std::string_view value);
void PutInt(JsonWriter& w, std::string_view key, int64_t value);
void PutBool(JsonWriter& w, std::string_view key, bool value);
// Epoch seconds with milliseconds, as ECS writes timestamps; nothing when
// `t` is InfinitePast (unset).
void PutTime(JsonWriter& w, std::string_view key, absl::Time t);
void PutStrings(JsonWriter& w, std::string_view key,
                const std::vector<std::string>& values);
std::string Str(const rapidjson::Value& v, const char* name);
std::optional<int64_t> Int(const rapidjson::Value& v, const char* name);
bool Bool(const rapidjson::Value& v, const char* name, bool otherwise);
std::vector<std::string> Strings(const rapidjson::Value& v, const char* name);
// v[name] when it is an object/array; nullptr otherwise.
const rapidjson::Value* Object(const rapidjson::Value& v, const char* name);
const rapidjson::Value* Array(const rapidjson::Value& v, const char* name);
// Compact JSON of a value.
std::string ToJson(const rapidjson::Value& v);

// `key`: [{first: ..., second: ...}, ...], the shape of ECS's tags,
// failures and attachment details.
template <typename Pairs>
void PutPairs(JsonWriter& w, const char* key, const Pairs& pairs,
              const char* first, const char* second) {
  w.Key(key);
  w.StartArray();
  for (const auto& [a, b] : pairs) {
    w.StartObject();
    Put(w, first, a);
    Put(w, second, b);
    w.EndObject();
  }
  w.EndArray();
}
void PutTags(JsonWriter& w, const std::map<std::string, std::string>& tags);

// ECS's rules beyond the model (aws_fake_ecs_rules.cc); each returns the
// error ECS answers, nullopt when the value passes.
std::optional<Reply> CheckTags(const std::map<std::string, std::string>& tags);
// Task cpu and memory ("1024", "1 vCPU"; "2048", "2GB") as Fargate sizes.
std::optional<Reply> CheckFargateSize(const std::string& cpu,
                                      const std::string& memory);
// What Fargate refuses in a task definition (a RegisterTaskDefinition body).
std::optional<Reply> CheckFargate(const rapidjson::Value& def);
// What ECS refuses in any task definition, and Fargate's rules when
// `fargate` (requiresCompatibilities has FARGATE).
std::optional<Reply> CheckTaskDefinition(const rapidjson::Value& def,
                                         bool fargate);

inline constexpr absl::Time kUnset = absl::InfinitePast();

struct StoredLogEvent {
  int64_t timestamp = 0;  // ms
  int64_t ingestion = 0;  // ms
  std::string message;
};

struct LogStreamState {
  int64_t created_ms = 0;
  // In arrival order, so that a reader following the stream with a forward
  // token sees every event once (CloudWatch orders by timestamp; clients
  // here send each stream's events in order).
  std::vector<StoredLogEvent> events;
  uint64_t sequence = 0;
};

struct LogGroupState {
  int64_t created_ms = 0;
  std::optional<int> retention_days;
  std::map<std::string, std::string> tags;
  std::map<std::string, LogStreamState> streams;
};

struct MountSpec {
  std::string volume;
  std::string container_path;
  bool read_only = false;
};

// A container's dependsOn entry.
struct Dependency {
  std::string container;
  std::string condition;  // START, COMPLETE, SUCCESS, HEALTHY
};

// A task's container: what its definition (with overrides) says, and its
// state.
struct TaskContainer {
  FakeContainer spec;
  std::string arn;
  bool essential = true;
  bool privileged = false;
  bool read_only_root = false;
  std::vector<std::string> cap_add;
  std::vector<std::string> cap_drop;
  std::vector<MountSpec> mounts;
  std::string log_driver;
  std::map<std::string, std::string> log_options;
  int stop_timeout_seconds = 30;
  std::vector<Dependency> depends_on;
  std::optional<docker::HealthCheck> health_check;
  ContainerBehaviour behaviour;

  std::string last_status = "PENDING";
  std::string health_status = "UNKNOWN";  // HEALTHY, UNHEALTHY, UNKNOWN
  std::optional<int> exit_code;
  std::string reason;
  std::string runtime_id;  // the Docker container id, or a made-up one
  std::string log_group;   // set once the awslogs stream exists
  std::string log_stream;
};

struct TaskVolume {
  std::string name;
  // host.sourcePath: a bind mount of this host path.
  std::string host_path;
  // EFS: one Docker volume per file system (and root directory) for the
  // fake's life, so that tasks share it as they would share EFS.
  std::string efs_key;
};

struct TaskState {
  FakeTask pub;  // containers and exit_codes are filled by snapshots
  std::string id;
  std::string family;
  int revision = 0;
  std::string network_mode;
  std::string cpu;
  std::string memory;
  int ephemeral_gib = 20;
  bool fargate = false;
  bool own = false;  // ServeOwnTask's: never changes
  std::vector<TaskContainer> containers;
  std::vector<TaskVolume> volumes;
  std::string overrides_json;  // as received, or ""
  // awsvpc
  bool awsvpc = false;
  std::string subnet;
  std::string security_group;
  std::string attachment_id;
  std::string eni;
  std::string private_ip;
  std::string mac;
  // Docker mode: the container that holds the task's network namespace.
  std::string pause_id;

  absl::Time created_at = kUnset;
  absl::Time phase_since = kUnset;  // when last_status was entered
  absl::Time pull_started_at = kUnset;
  absl::Time pull_stopped_at = kUnset;
  absl::Time started_at = kUnset;
  absl::Time stopping_at = kUnset;
  absl::Time execution_stopped_at = kUnset;
  absl::Time stopped_at = kUnset;
  bool stop_requested = false;
  absl::Time stop_requested_at = kUnset;
  // A Docker runner owns the task's progress: attaching it to the network
  // (in PROVISIONING) or running its containers (from PENDING on).
  bool launching = false;
  int64_t version = 1;
};

// What a registered task definition has beyond FakeTaskDefinition.
struct TaskDefinitionExtra {
  absl::Time registered_at = kUnset;
  absl::Time deregistered_at = kUnset;
  std::vector<std::string> compatibilities;  // "EC2", "FARGATE"
};

struct CredentialEndpoint {
  std::string authorization_token;
  absl::Duration lifetime;
};

struct Injection {
  std::string operation;
  int status = 0;
  std::string code;
  int remaining = 0;
};

struct Idempotency {
  std::string body;  // canonical JSON of the RunTask request
  std::vector<std::string> task_arns;
};

// The operations of a service: each runs with `mu` held, on a body the
// model has accepted.
struct Fake;
using Operation = Reply (*)(Fake& fake, const rapidjson::Document& body,
                            const std::string& raw);
// nullptr when the fake does not implement it.
Operation EcsOperation(std::string_view name);
Operation LogsOperation(std::string_view name);

// Everything FakeAws::Impl is (FakeAws's pimpl derives from it).
struct Fake {
  // Set at Start; but for provisioning_for (SetProvisioningFor), which
  // changes and is read with `mu` held.
  FakeAwsOptions options;
  Clock* clock = nullptr;
  std::string id;  // the Docker label value, "aws-fake-<hex>"
  std::optional<AwsModel> ecs_model;
  std::optional<AwsModel> logs_model;
  std::unique_ptr<http::HttpServer> server;
  std::unique_ptr<docker::DockerClient> docker;  // docker mode only
  // Docker mode: the network of awsvpc tasks' pause containers.
  std::string network;

  mutable absl::Mutex mu;
  bool shutting_down ABSL_GUARDED_BY(mu) = false;
  // The same, for Docker calls' stop predicates, which must not take `mu`.
  std::atomic<bool> closing{false};
  std::mt19937_64 rng ABSL_GUARDED_BY(mu);
  std::map<std::string, FakeAwsCredential> credentials ABSL_GUARDED_BY(mu);
  std::map<std::string, CredentialEndpoint> credential_endpoints
      ABSL_GUARDED_BY(mu);
  int credential_fetches ABSL_GUARDED_BY(mu) = 0;
  std::vector<std::string> issued_credentials ABSL_GUARDED_BY(mu);  // keys
  std::map<std::string, std::string> metadata_endpoints
      ABSL_GUARDED_BY(mu);  // id -> own task ARN
  std::vector<Injection> injections ABSL_GUARDED_BY(mu);
  std::vector<std::string> calls ABSL_GUARDED_BY(mu);
  std::vector<FakeRejection> rejected ABSL_GUARDED_BY(mu);
  // family -> revisions, revision N at [N - 1] (deleted ones stay, as
  // DELETE_IN_PROGRESS, so that revisions keep increasing).
  std::map<std::string, std::vector<FakeTaskDefinition>> families
      ABSL_GUARDED_BY(mu);
  std::map<std::string, TaskDefinitionExtra> task_definition_extras
      ABSL_GUARDED_BY(mu);                                     // by ARN
  std::map<std::string, TaskState> tasks ABSL_GUARDED_BY(mu);  // by ARN
  std::vector<std::string> task_order ABSL_GUARDED_BY(mu);  // ARNs, by RunTask
  // (cluster, clientToken) -> what RunTask did with it.
  std::map<std::pair<std::string, std::string>, Idempotency> client_tokens
      ABSL_GUARDED_BY(mu);
  std::map<std::string, LogGroupState> log_groups ABSL_GUARDED_BY(mu);

  std::thread ticker;
  absl::Mutex threads_mu;
  std::vector<std::thread> runners ABSL_GUARDED_BY(threads_mu);

  // ------------------------------------------------------------ aws_fake.cc
  http::ServerResponse Handle(const http::ServerRequest& request);
  void Tick();  // the ticker thread
  std::string RandomHex(size_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  std::string RegionalArn(std::string_view service,
                          std::string_view resource) const;
  int64_t NowMs() const;

  // ------------------------------------------------------- aws_fake_ecs.cc
  // Moves every task along its lifecycle up to `now`; returns the ARNs of
  // tasks whose containers are now to be started on Docker.
  std::vector<std::string> Advance(absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void WriteTask(JsonWriter& w, const TaskState& task, bool with_tags) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // "" when every awslogs container of `task` has its group and stream
  // (created as the awslogs driver would); else the task's
  // ResourceInitializationError.
  std::string PrepareLogs(TaskState& task, absl::Time at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // The container never ran: TaskFailedToStart with `reason`.
  void FailToStart(TaskState& task, absl::Time at, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void EnterPending(TaskState& task, absl::Time at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // The task (not its containers) is RUNNING.
  void EnterRunning(TaskState& task, absl::Time at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Containers are done: DEPROVISIONING (awsvpc) or STOPPED.
  void Finish(TaskState& task, absl::Time at) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // An essential container exited first: the task stops.
  void EssentialExited(TaskState& task, absl::Time at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // The task stops for `stop_code` and `reason` unless it already stops.
  void StopFor(TaskState& task, absl::Time at, const std::string& stop_code,
               const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  std::string OwnTask(const std::string& cluster,
                      const std::string& launch_type,
                      const std::string& subnet_id,
                      const std::string& security_group_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  std::string OwnTaskMetadata(const TaskState& task, bool with_tags,
                              bool container_only) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // ------------------------------------------------------ aws_fake_logs.cc
  // Appends one event as the awslogs driver would (no request rules).
  void AppendLogEvent(const std::string& group, const std::string& stream,
                      int64_t timestamp_ms, std::string message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // ---------------------------------------------------- aws_fake_docker.cc
  // Makes the network of awsvpc tasks (at Start).
  absl::Status CreateDockerNetwork();
  // A thread that moves the task on: AttachToNetwork when it is
  // PROVISIONING, RunContainers when it is PENDING.
  void StartRunner(const std::string& task_arn);
  void RunOnDocker(const std::string& task_arn);
  // An awsvpc task's pause container, and the task's IP; then PENDING.
  void AttachToNetwork(const std::string& task_arn);
  // Runs one task's containers on Docker from PENDING to their exit.
  void RunContainers(const std::string& task_arn);
  // Removes every container, volume and network labelled with this fake's
  // id.
  void RemoveDockerLeftovers();
};

}  // namespace delegate::testing::aws_fake

#endif  // DELEGATE_TESTS_FAKES_AWS_FAKE_INTERNAL_H_
