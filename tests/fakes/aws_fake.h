// A loopback stand-in for Amazon ECS and CloudWatch Logs (and the two
// metadata endpoints a task sees), for tests that cannot reach AWS. It is as
// strict as the real services where a client can get something wrong:
//   - every request must carry a valid SigV4 signature (scope
//     DATE/REGION/ecs|logs/aws4_request, the service matching the target,
//     X-Amz-Date within 15 minutes of the fake's clock, content-type,
//     host, x-amz-date and x-amz-target signed) by a credential it knows
//     and that has not expired;
//   - every body is validated against the operation's input shape in
//     ecs-model/service-2.json or logs-model/service-2.json: required
//     members, JSON types, enums, string lengths and patterns, list and
//     number bounds, unknown members;
//   - the service rules a model cannot express (Fargate cpu/memory pairs,
//     awsvpc needs networkConfiguration, what Fargate forbids, clientToken
//     idempotency, PutLogEvents ordering, span and size) are checked too.
// A rejected request gets AWS's error shape ({"__type": ..., "message": ...}
// with the status AWS uses) and is recorded in Rejected(), so that a test can
// assert that the client under test never sent anything AWS would refuse.
// Codes: 400 MissingAuthenticationTokenException (no Authorization), 403
// UnrecognizedClientException (unknown key, wrong session token), 403
// InvalidSignatureException (wrong signature, scope or unsigned required
// header), 400 InvalidSignatureException "Signature expired" (X-Amz-Date
// more than 15 min off), 403 ExpiredTokenException, 400
// UnknownOperationException (target, path or Content-Type), 400
// SerializationException (not JSON, wrong JSON types, unknown members), 400
// ClientException (ECS) / InvalidParameterException (Logs) for a modelled
// constraint; then each operation's own (ClientException,
// InvalidParameterException, ConflictException, ...).
//
// Tasks play the ECS lifecycle PROVISIONING -> PENDING -> RUNNING ->
// (DEPROVISIONING) -> STOPPED on the fake's clock. With `docker_host` set,
// a task's containers really run on that Docker Engine (image, command or
// entryPoint, environment, user, working directory, privileged, read-only
// root, capabilities, bind mounts of host volumes, healthCheck) and their
// output goes to CloudWatch Logs the way the awslogs driver writes it
// (stream PREFIX/CONTAINER/TASK_ID in awslogs-group). Without it, each
// container "runs" per ContainerBehaviour.
//
// On Docker, tasks run the way the ECS agent runs them:
//   - awsvpc: at the end of PROVISIONING a "pause" container (pause_image
//     running a long sleep) is started on a Docker network of the fake's own,
//     and every container of the task joins its network namespace (network
//     mode container:<pause>): they reach each other on localhost. The pause
//     container's address on that network is the task's IP, shown from
//     PENDING on in the ElasticNetworkInterface attachment
//     (privateIPv4Address) and in each container's networkInterfaces; the
//     test process can connect to it. The pause container goes before the
//     task leaves DEPROVISIONING; the network stays for the fake's life.
//     Other network modes: each container has a namespace of its own on
//     Docker's default bridge.
//   - dependsOn: a container starts once each of its dependencies is met
//     (START: the dependency started; COMPLETE: it exited; SUCCESS: it
//     exited 0; HEALTHY: Docker reports its healthCheck healthy). One that
//     can no longer be met (a SUCCESS dependency exited non-zero, a HEALTHY
//     one stopped or went unhealthy) stops the waiting container without
//     starting it, exit code 143 and reason "CannotStartContainerError:
//     dependency graph: failed to resolve container ordering dependency
//     [...] for target [...] as dependency did not exit successfully." (or
//     "... did not become healthy.", the fake's words), as the ECS agent
//     does. The task is PENDING while a container waits for its
//     dependencies, then RUNNING; one that stops first (StopTask, an
//     essential container stopped as above) never runs. On stop, containers
//     are stopped in the reverse of their start order.
//   - essential: the task stops when any essential container exits (or is
//     stopped as above): stopCode EssentialContainerExited, the others get
//     SIGTERM, then SIGKILL after their stopTimeout (at most 2 s here), so
//     a shell that ignores SIGTERM exits 137; a non-essential container
//     exits without stopping the task.
//   - volumes: name-only volumes are a Docker volume of the task (shared by
//     its containers, not by other tasks, removed with the task); EFS
//     volumes one Docker volume per file system (and root directory) for
//     the fake's life, shared by every task that mounts it; host.sourcePath
//     a bind mount.
//   - healthCheck goes to Docker as the container's Healthcheck; its
//     healthStatus in DescribeTasks (HEALTHY, UNHEALTHY, UNKNOWN while Docker
//     says "starting") is the Engine's, polled, and the task's healthStatus
//     follows its essential containers' as ECS documents it.
// RegisterTaskDefinition refuses with ClientException what ECS would: a
// dependsOn naming an unknown container or forming a cycle, COMPLETE or
// SUCCESS on an essential container, HEALTHY on a container without a
// healthCheck, healthCheck values out of ECS's ranges.
//
// Where it simplifies: clusters are not modelled (every cluster name exists,
// with capacity for EC2 and Fargate tasks alike). Without Docker, a task
// stops when its first essential container exits (the others are stopped:
// exit code 137) and dependsOn and healthCheck are not played. awsvpc tasks
// go through DEPROVISIONING (for provisioning_for) before STOPPED; exit
// codes show from DEPROVISIONING on. A task whose awslogs group does not
// exist (and awslogs-create-group is not "true") fails to start with
// ResourceInitializationError, as in ECS. On Docker, images are never pulled
// (one the engine lacks is a CannotPullContainerError), `secrets` become
// "fake-secret-from:<valueFrom>", an unhealthy container does not stop its
// task, and Docker runs its first health check one interval after the start
// (ECS's minimum interval is 5 s). Log events are kept per stream in
// arrival order.
#ifndef DELEGATE_TESTS_FAKES_AWS_FAKE_H_
#define DELEGATE_TESTS_FAKES_AWS_FAKE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "delegate/clock.h"
#include "http/http_client.h"

namespace delegate::testing {

struct FakeAwsCredential {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty: long-term keys (no token expected)
  // Requests signed with this credential after this time are answered 403
  // ExpiredTokenException.
  absl::Time expires = absl::InfiniteFuture();
};

// What a container of a task does when the fake is not running containers
// on Docker (FakeAwsOptions::docker_host empty).
struct ContainerBehaviour {
  int exit_code = 0;
  // Written to the container's awslogs stream (when its task definition has
  // an awslogs logConfiguration), one event each, while RUNNING.
  std::vector<std::string> output;
  // How long the container runs before its task goes to STOPPED.
  absl::Duration run_for = absl::Milliseconds(50);
  // The task never leaves PENDING (until StopTask).
  bool stuck_in_pending = false;
  // The task stops before any container runs: stopCode TaskFailedToStart,
  // this as stoppedReason and as the container's reason, no exit code.
  // E.g. "CannotPullContainerError: pull image manifest has been retried 5
  // time(s): failed to resolve ref docker.io/library/nope:latest".
  std::string fail_to_start;
};

// A container as RunTask started it: its definition with overrides applied.
struct FakeContainer {
  std::string name;
  std::string image;
  std::vector<std::string> entry_point;
  std::vector<std::string> command;
  std::map<std::string, std::string> environment;
  // container `secrets` by name: valueFrom (an ARN), never a value.
  std::map<std::string, std::string> secrets;
  std::string user;
  std::string working_directory;
};

struct FakeAwsOptions {
  std::string region = "us-east-1";
  std::string account_id = "123456789012";
  // The folder with ecs-model/ and logs-model/ (DELEGATE_AWS_TESTDATA).
  std::string testdata_dir;
  // Credentials it accepts; more with AddCredential.
  std::vector<FakeAwsCredential> credentials;
  // The lifecycle's steps, each on `clock`. provisioning_for is how long a
  // task stays PROVISIONING (and awsvpc tasks DEPROVISIONING): Fargate
  // takes tens of seconds there, which a test can model here or, while the
  // fake runs, with FakeAws::SetProvisioningFor.
  absl::Duration provisioning_for = absl::Milliseconds(20);
  absl::Duration pending_for = absl::Milliseconds(20);
  // Non-empty ("unix:///var/run/docker.sock"): run containers on that
  // engine; they, their volumes and the fake's network are labelled
  // "delegate.test.aws-fake=<this fake's id>", all removed by the
  // destructor.
  std::string docker_host;
  // On Docker, the image of each awsvpc task's pause container, run as
  // `sleep 2147483647`; the Engine must have it (tests/fakes/docker_engine.h's
  // kTestImage, made by scripts/docker-test-setup.sh).
  std::string pause_image = "delegate-test/busybox:latest";
  // What containers do without Docker; called at RunTask for each
  // container, with the fake's lock held (it must not call the fake).
  // Unset: exit 0, no output.
  std::function<ContainerBehaviour(const FakeContainer&)> behaviour;
  // nullptr: Clock::Real().
  Clock* clock = nullptr;
};

struct FakeTaskDefinition {
  std::string arn;  // arn:aws:ecs:REGION:ACCOUNT:task-definition/FAMILY:REV
  std::string family;
  int revision = 0;
  std::string status;  // ACTIVE, INACTIVE, DELETE_IN_PROGRESS
  std::string json;    // the RegisterTaskDefinition body as received
  std::map<std::string, std::string> tags;
};

struct FakeTask {
  std::string arn;  // arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID
  std::string cluster;
  std::string task_definition_arn;
  std::string launch_type;
  std::string last_status;
  std::string desired_status;
  std::string started_by;
  std::string client_token;
  std::string stop_code;
  std::string stopped_reason;
  std::map<std::string, std::string> tags;
  std::vector<FakeContainer> containers;
  std::map<std::string, int> exit_codes;  // by container name, once exited
  std::string request_json;               // the RunTask body as received
};

struct FakeLogEvent {
  int64_t timestamp = 0;  // ms since the epoch
  std::string message;
};

// A request the fake refused, and why.
struct FakeRejection {
  std::string operation;  // "RunTask", or the target/path when unknown
  int status = 0;
  std::string code;  // the __type: "ValidationException", ...
  std::string message;
};

class FakeAws {
 public:
  // Loads the models from options.testdata_dir and listens on 127.0.0.1.
  static absl::StatusOr<std::unique_ptr<FakeAws>> Start(FakeAwsOptions options);
  ~FakeAws();  // stops tasks and removes their Docker containers
  FakeAws(const FakeAws&) = delete;
  FakeAws& operator=(const FakeAws&) = delete;

  // "http://127.0.0.1:PORT": the endpoint of ECS and Logs alike
  // (AWS_ENDPOINT_URL).
  std::string url() const;
  // "delegate.test.aws-fake=<this fake's id>": the label of every container,
  // volume and network it makes on Docker.
  std::string docker_label() const;
  std::string region() const;

  // ------------------------------------------------------------ credentials
  void AddCredential(FakeAwsCredential credential);
  // From now on, requests signed with it get ExpiredTokenException.
  void ExpireCredential(const std::string& access_key_id);
  // The ECS container credentials endpoint, for
  // AWS_CONTAINER_CREDENTIALS_FULL_URI:
  // "http://127.0.0.1:PORT/v2/credentials/ID". Each GET answers
  // {"AccessKeyId","SecretAccessKey","Token","Expiration"} with a fresh
  // credential that is valid for `lifetime` (and accepted by the fake), when
  // the request's Authorization header equals `authorization_token` (empty: no
  // header expected); otherwise 401/403.
  std::string ServeContainerCredentials(std::string authorization_token,
                                        absl::Duration lifetime);
  int container_credential_fetches() const;
  // Every credential the container credentials endpoints have issued so far
  // expires now (requests signed with them get ExpiredTokenException); the
  // next GET issues a fresh one.
  void ExpireIssuedContainerCredentials();

  // ------------------------------------------------------------ metadata
  // Makes a RUNNING task in `cluster` that stands for the delegate itself,
  // with an ElasticNetworkInterface attachment in `subnet_id`, and returns
  // the task metadata v4 base URI for it (ECS_CONTAINER_METADATA_URI_V4):
  // GET URI/task answers {"Cluster","TaskARN","Family","Revision",
  // "LaunchType","AvailabilityZone","Containers":[...]}, PascalCase.
  std::string ServeOwnTask(const std::string& cluster,
                           const std::string& launch_type,
                           const std::string& subnet_id,
                           const std::string& security_group_id);

  // ------------------------------------------------------------ lifecycle
  // From now on, PROVISIONING and DEPROVISIONING last `duration` (for tasks
  // already in them too, counted from when they entered).
  void SetProvisioningFor(absl::Duration duration);

  // ------------------------------------------------------------ faults
  // The next `count` requests for `operation` ("RunTask"; "*" for any) are
  // answered with `status` and {"__type": code, "message": ...} without being
  // acted on.
  void InjectError(const std::string& operation, int status,
                   const std::string& code, int count = 1);

  // ------------------------------------------------------------ inspection
  // Operation names of every signed, well-formed request, in arrival order
  // (refused ones included, injected errors included).
  std::vector<std::string> Calls() const;
  int CallCount(const std::string& operation) const;
  // Refused for a reason other than an injected error, in arrival order,
  // unauthenticated requests included. Not recorded: the refusals a correct
  // client meets because of the state of a resource and handles
  // (ResourceAlreadyExistsException, ResourceNotFoundException).
  std::vector<FakeRejection> Rejected() const;
  std::vector<FakeTaskDefinition> TaskDefinitions() const;
  std::vector<FakeTask> Tasks() const;  // the own task excluded
  std::vector<std::string> LogGroups() const;
  std::vector<std::string> LogStreams(const std::string& group) const;
  std::vector<FakeLogEvent> LogEvents(const std::string& group,
                                      const std::string& stream) const;

 private:
  struct Impl;
  explicit FakeAws(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The AWS data folder the tests were configured with (DELEGATE_AWS_TESTDATA
// compile definition), or $DELEGATE_AWS_TESTDATA when set.
std::string AwsTestdataDir();

// POSTs `body` to `url` (FakeAws::url()) as an AWS JSON 1.1 call of `target`
// ("AmazonEC2ContainerServiceV20141113.RunTask", "Logs_20140328.PutLogEvents")
// signed with SigV4 (libdelegate's aws::Sign) by `credential` for `region`
// (service ecs, or logs for a Logs_20140328 target) at `time`. Returns the
// answer whatever its status; errors only for the transfer.
absl::StatusOr<http::Response> SignedAwsCall(
    http::HttpClient& client, const std::string& url,
    const FakeAwsCredential& credential, const std::string& region,
    const std::string& target, const std::string& body,
    absl::Time time = absl::Now());

// The __type of an AWS error answer ("prefix#Code" -> "Code"); "" for none.
std::string AwsErrorType(const http::Response& response);

// A test's client of a FakeAws: SignedAwsCall with one credential, signed at
// `clock`'s time (nullptr: the real clock). Thread-safe.
class FakeAwsClient {
 public:
  FakeAwsClient(const FakeAws& fake, FakeAwsCredential credential,
                Clock* clock = nullptr);

  // The answer; when the transfer itself fails, status 0 and the error as
  // the body.
  http::Response Call(const std::string& target, const std::string& body);
  http::Response Ecs(const std::string& operation, const std::string& body);
  http::Response Logs(const std::string& operation, const std::string& body);

  // DescribeTasks of `task_arn` in `cluster`, every 10 ms (real time) until
  // its lastStatus is `last_status`: that answer's body, or "" after
  // `timeout`.
  std::string WaitForTask(const std::string& cluster,
                          const std::string& task_arn,
                          const std::string& last_status,
                          absl::Duration timeout = absl::Seconds(30));

 private:
  const std::string url_;
  const std::string region_;
  const FakeAwsCredential credential_;
  Clock* const clock_;
  http::HttpClient http_;
};

}  // namespace delegate::testing

#endif  // DELEGATE_TESTS_FAKES_AWS_FAKE_H_
