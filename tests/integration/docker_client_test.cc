// The Docker Engine client against the real daemon (DOCKER_HOST or the
// default socket), plus its pure parts (DOCKER_HOST parsing, the stream
// demultiplexer) that need no daemon. Without a reachable daemon the daemon
// tests skip, unless DELEGATE_REQUIRE_DOCKER is set (CI), when they fail.
#include "executor/docker/docker_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "executor/docker/docker_stream.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate::docker {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kImage[] = "delegate-test/busybox:latest";
constexpr char kLabelKey[] = "io.libdelegate.test";
constexpr char kLabelValue[] = "docker-client";
// Scopes each test's cleanup to what it created, so that tests running in
// parallel processes do not remove each other's containers.
constexpr char kRunLabelKey[] = "io.libdelegate.test.run";

std::string Message(const absl::Status& s) { return std::string(s.message()); }

// Collects demultiplexed output; called on the calling thread only.
struct Captured {
  std::string out;
  std::string err;
  OutputCallback callback() {
    return [this](LogStream stream, std::string_view bytes) {
      EXPECT_FALSE(bytes.empty());
      (stream == LogStream::kStderr ? err : out).append(bytes);
    };
  }
};

// --- No daemon needed ---

TEST(ParseDockerHostTest, EmptyIsTheDefaultSocket) {
  absl::StatusOr<Endpoint> e = ParseDockerHost("");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->unix_socket, "/var/run/docker.sock");
  EXPECT_EQ(e->base_url, "http://localhost");
  EXPECT_EQ(e->display, "unix:///var/run/docker.sock");
}

TEST(ParseDockerHostTest, UnixSocket) {
  absl::StatusOr<Endpoint> e = ParseDockerHost("unix:///x");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->unix_socket, "/x");
  EXPECT_EQ(e->base_url, "http://localhost");
  EXPECT_EQ(e->display, "unix:///x");
}

TEST(ParseDockerHostTest, Tcp) {
  absl::StatusOr<Endpoint> e = ParseDockerHost("tcp://127.0.0.1:2375");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->unix_socket, "");
  EXPECT_EQ(e->base_url, "http://127.0.0.1:2375");
  EXPECT_EQ(e->display, "tcp://127.0.0.1:2375");

  e = ParseDockerHost("tcp://docker.internal");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->base_url, "http://docker.internal:2375");
  e = ParseDockerHost("tcp://[::1]:2376/");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->base_url, "http://[::1]:2376");
}

TEST(ParseDockerHostTest, JunkNamesDockerHost) {
  for (const char* junk :
       {"junk", "unix://", "unix://relative", "tcp://", "tcp://host:port",
        "tcp://host:99999", "tcp://host:1/path", "ssh://user@host",
        "npipe:////./pipe/docker_engine"}) {
    absl::StatusOr<Endpoint> e = ParseDockerHost(junk);
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument) << junk;
    EXPECT_THAT(Message(e.status()), HasSubstr("DOCKER_HOST")) << junk;
    EXPECT_THAT(Message(e.status()), HasSubstr(junk));
  }
}

TEST(ConnectTest, MissingSocketIsUnavailable) {
  absl::StatusOr<Endpoint> e =
      ParseDockerHost("unix:///nonexistent/docker.sock");
  ASSERT_TRUE(e.ok());
  absl::StatusOr<std::unique_ptr<DockerClient>> client =
      DockerClient::Connect(*e, absl::Seconds(2));
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Message(client.status()),
              HasSubstr("cannot reach the Docker Engine at "
                        "unix:///nonexistent/docker.sock"));
  EXPECT_THAT(Message(client.status()),
              HasSubstr("start dockerd or set DOCKER_HOST"));
}

std::string Frame(int stream, std::string_view payload) {
  std::string frame(8, '\0');
  frame[0] = static_cast<char>(stream);
  uint32_t n = static_cast<uint32_t>(payload.size());
  frame[4] = static_cast<char>(n >> 24);
  frame[5] = static_cast<char>(n >> 16);
  frame[6] = static_cast<char>(n >> 8);
  frame[7] = static_cast<char>(n);
  frame.append(payload);
  return frame;
}

TEST(StreamDemuxerTest, AnyChunkingGivesTheSameStreams) {
  std::string big(70000, 'z');
  std::string wire = Frame(1, "hello ") + Frame(2, "oops\n") + Frame(1, "") +
                     Frame(1, "world\n") + Frame(2, big) + Frame(0, "in");
  for (size_t chunk = 1; chunk <= 17; ++chunk) {
    Captured captured;
    OutputCallback cb = captured.callback();
    StreamDemuxer demuxer(cb);
    for (size_t i = 0; i < wire.size(); i += chunk) {
      ASSERT_TRUE(demuxer.Feed(std::string_view(wire).substr(i, chunk)).ok());
    }
    EXPECT_TRUE(demuxer.Finish().ok());
    EXPECT_EQ(captured.out, "hello world\nin") << chunk;
    EXPECT_EQ(captured.err, "oops\n" + big) << chunk;
  }
}

TEST(StreamDemuxerTest, RejectsUnknownStreamsAndTruncation) {
  Captured captured;
  OutputCallback cb = captured.callback();
  {
    StreamDemuxer demuxer(cb);
    EXPECT_EQ(demuxer.Feed(Frame(7, "x")).code(), absl::StatusCode::kDataLoss);
    EXPECT_EQ(demuxer.Feed("more").code(), absl::StatusCode::kDataLoss);
  }
  {
    StreamDemuxer demuxer(cb);
    ASSERT_TRUE(demuxer.Feed(Frame(1, "abc").substr(0, 9)).ok());
    EXPECT_EQ(demuxer.Finish().code(), absl::StatusCode::kDataLoss);
  }
  {
    StreamDemuxer demuxer(cb);
    ASSERT_TRUE(demuxer.Feed(std::string(3, '\1')).ok());
    EXPECT_EQ(demuxer.Finish().code(), absl::StatusCode::kDataLoss);
  }
}

// --- A fake Engine ---

using Answers = std::map<std::string, std::string>;

// A stand-in Engine on loopback TCP for what the real daemon here cannot
// show: other API versions, and a registry's refusal inside a 200 pull
// stream. Answers each request from `answers` by path prefix.
class FakeEngine {
 public:
  explicit FakeEngine(std::map<std::string, std::string> answers)
      : answers_(std::move(answers)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    EXPECT_EQ(listen(fd_, 8), 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeEngine() {
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  Endpoint endpoint() const {
    return *ParseDockerHost(absl::StrCat("tcp://127.0.0.1:", port_));
  }
  // The request heads seen so far.
  std::vector<std::string> heads() {
    absl::MutexLock lock(&mu_);
    return heads_;
  }

 private:
  // One connection at a time, one request per connection: enough here.
  void Serve() {
    while (true) {
      int conn = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn < 0) return;
      std::string in;
      char buf[4096];
      while (in.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = recv(conn, buf, sizeof(buf), 0);
        if (n <= 0) break;
        in.append(buf, static_cast<size_t>(n));
      }
      std::string head = in.substr(0, in.find("\r\n\r\n"));
      {
        absl::MutexLock lock(&mu_);
        heads_.push_back(head);
      }
      std::string target = head.substr(head.find(' ') + 1);
      target = target.substr(0, target.find(' '));
      std::string body = R"({"message":"not faked"})";
      int status = 404;
      for (const auto& [prefix, answer] : answers_) {
        if (target.starts_with(prefix)) {
          body = answer;
          status = 200;
        }
      }
      std::string out = absl::StrCat(
          "HTTP/1.1 ", status,
          " X\r\nConnection: close\r\nContent-Length: ", body.size(),
          "\r\n\r\n", body);
      (void)send(conn, out.data(), out.size(), MSG_NOSIGNAL);
      shutdown(conn, SHUT_WR);
      while (recv(conn, buf, sizeof(buf), 0) > 0) {
      }
      close(conn);
    }
  }

  std::map<std::string, std::string> answers_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<std::string> heads_ ABSL_GUARDED_BY(mu_);
};

TEST(FakeEngineTest, NegotiatesDownToTheNewestKnownVersion) {
  FakeEngine engine(Answers{{"/version", R"({"ApiVersion":"1.99"})"}});
  auto client = DockerClient::Connect(engine.endpoint());
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->api_version(), "1.47");
}

TEST(FakeEngineTest, PingSaysWhetherTheEngineTakesNewConnections) {
  auto engine = std::make_unique<FakeEngine>(
      Answers{{"/version", R"({"ApiVersion":"1.41"})"}, {"/_ping", "OK"}});
  auto client = DockerClient::Connect(engine->endpoint());
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->Ping(absl::Seconds(2)).ok());
  const std::string display = engine->endpoint().display;
  engine.reset();  // as a dockerd that shut down
  absl::Status gone = (*client)->Ping(absl::Seconds(2));
  EXPECT_EQ(gone.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Message(gone),
              HasSubstr("the Docker Engine at " + display + " does not answer"));
}

TEST(FakeEngineTest, RefusesAnOldDaemon) {
  FakeEngine engine(Answers{{"/version", R"({"ApiVersion":"1.30"})"}});
  auto client = DockerClient::Connect(engine.endpoint());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(client.status()), HasSubstr("1.30"));
  EXPECT_THAT(Message(client.status()), HasSubstr("1.41"));
}

TEST(FakeEngineTest, PullErrorInsideA200StreamFails) {
  FakeEngine engine(
      {{"/version", R"({"ApiVersion":"1.43"})"},
       {"/v1.43/images/create",
        "{\"status\":\"Pulling from team/app\",\"id\":\"1.2\"}\r\n"
        "{\"status\":\"Downloading\",\"progressDetail\":{},"
        "\"progress\":\"[=>   ] 1MB/2MB\",\"id\":\"abc\"}\r\n"
        "{\"errorDetail\":{\"message\":\"unauthorized: no access for "
        "s3cret-pw\"},\"error\":\"unauthorized\"}\r\n"}});
  auto client = DockerClient::Connect(engine.endpoint());
  ASSERT_TRUE(client.ok()) << client.status();
  RegistryAuth auth;
  auth.username = "me";
  auth.password = "s3cret-pw";
  std::vector<std::string> progress;
  absl::Status pulled = (*client)->PullImage(
      "registry.example:5000/team/app:1.2", &auth,
      [&](std::string_view line) { progress.emplace_back(line); });
  EXPECT_EQ(pulled.code(), absl::StatusCode::kPermissionDenied) << pulled;
  EXPECT_THAT(Message(pulled), HasSubstr("unauthorized: no access for"));
  EXPECT_THAT(Message(pulled), Not(HasSubstr("s3cret")));
  EXPECT_EQ(progress,
            (std::vector<std::string>{"1.2: Pulling from team/app",
                                      "abc: Downloading [=>   ] 1MB/2MB"}));

  std::vector<std::string> heads = engine.heads();
  ASSERT_EQ(heads.size(), 2u);
  EXPECT_THAT(heads[1], HasSubstr("POST /v1.43/images/create?fromImage="
                                  "registry.example%3A5000%2Fteam%2Fapp"
                                  "&tag=1.2 "));
  size_t at = heads[1].find("X-Registry-Auth: ");
  ASSERT_NE(at, std::string::npos) << heads[1];
  std::string encoded = heads[1].substr(at + 17);
  encoded = encoded.substr(0, encoded.find("\r\n"));
  EXPECT_EQ(encoded.size() % 4, 0u) << "padded base64url";
  EXPECT_EQ(encoded.find_first_of("+/"), std::string::npos) << encoded;
  while (!encoded.empty() && encoded.back() == '=') encoded.pop_back();
  std::string json;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(encoded, &json));
  EXPECT_EQ(json, R"({"username":"me","password":"s3cret-pw",)"
                  R"("serveraddress":"registry.example:5000"})");
}

TEST(FakeEngineTest, PullSplitsNamesAndDefaultsTheTag) {
  FakeEngine engine({{"/version", R"({"ApiVersion":"1.41"})"},
                     {"/v1.41/images/create", "{\"status\":\"done\"}\n"}});
  auto client = DockerClient::Connect(engine.endpoint());
  ASSERT_TRUE(client.ok()) << client.status();
  for (const char* image :
       {"alpine", "localhost:5000/app", "a/b@sha256:0123", "a/b:"}) {
    EXPECT_TRUE((*client)->PullImage(image, nullptr, nullptr).ok()) << image;
  }
  std::vector<std::string> heads = engine.heads();
  ASSERT_EQ(heads.size(), 5u);
  EXPECT_THAT(heads[1], HasSubstr("?fromImage=alpine&tag=latest "));
  EXPECT_THAT(heads[2],
              HasSubstr("?fromImage=localhost%3A5000%2Fapp&tag=latest "));
  EXPECT_THAT(heads[3], HasSubstr("?fromImage=a%2Fb&tag=sha256%3A0123 "));
  EXPECT_THAT(heads[4], HasSubstr("?fromImage=a%2Fb&tag=latest "));
  EXPECT_THAT(heads[1], Not(HasSubstr("X-Registry-Auth")));
}

// --- Against the daemon ---

class DockerClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* host = std::getenv("DOCKER_HOST");
    absl::StatusOr<Endpoint> endpoint = ParseDockerHost(host ? host : "");
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    absl::StatusOr<std::unique_ptr<DockerClient>> client =
        DockerClient::Connect(*endpoint, absl::Seconds(5));
    if (!client.ok()) {
      if (std::getenv("DELEGATE_REQUIRE_DOCKER") != nullptr) {
        FAIL() << "DELEGATE_REQUIRE_DOCKER is set but: " << client.status();
      }
      GTEST_SKIP() << "no Docker Engine (set DELEGATE_REQUIRE_DOCKER to make "
                      "this a failure): "
                   << client.status();
    }
    client_ = std::move(*client);
    absl::StatusOr<bool> image = client_->ImageExists(kImage);
    ASSERT_TRUE(image.ok()) << image.status();
    if (!*image) {
      if (std::getenv("DELEGATE_REQUIRE_DOCKER") != nullptr) {
        FAIL() << "test image " << kImage << " is missing";
      }
      GTEST_SKIP() << "test image " << kImage << " is missing";
    }
    static std::atomic<int> counter{0};
    run_ = absl::StrCat(getpid(), "-", counter++);
  }

  void TearDown() override {
    if (client_ == nullptr) return;
    const std::string label = absl::StrCat(kRunLabelKey, "=", run_);
    if (auto ids = client_->ListContainers(label); ids.ok()) {
      for (const std::string& id : *ids) {
        EXPECT_TRUE(client_->RemoveContainer(id, /*force=*/true).ok());
      }
    }
    if (auto ids = client_->ListNetworks(label); ids.ok()) {
      for (const std::string& id : *ids) {
        EXPECT_TRUE(client_->RemoveNetwork(id).ok());
      }
    }
    if (auto names = client_->ListVolumes(label); names.ok()) {
      for (const std::string& name : *names) {
        EXPECT_TRUE(client_->RemoveVolume(name).ok());
      }
    }
    if (!bind_dir_.empty()) std::filesystem::remove_all(bind_dir_);
  }

  std::map<std::string, std::string> Labels() const {
    return {{kLabelKey, kLabelValue}, {kRunLabelKey, run_}};
  }
  std::string Name(const std::string& what) const {
    return absl::StrCat("libdelegate-test-", run_, "-", what);
  }

  ContainerSpec Shell(const std::string& what,
                      const std::string& script) const {
    ContainerSpec spec;
    spec.name = Name(what);
    spec.image = kImage;
    spec.entrypoint = {"/bin/sh", "-c", script};
    spec.labels = Labels();
    return spec;
  }

  // Creates and starts; returns the id.
  std::string Run(const ContainerSpec& spec) {
    absl::StatusOr<std::string> id = client_->CreateContainer(spec);
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return "";
    absl::Status started = client_->StartContainer(*id);
    EXPECT_TRUE(started.ok()) << started;
    return *id;
  }

  std::unique_ptr<DockerClient> client_;
  std::string run_;
  std::string bind_dir_;
};

TEST_F(DockerClientTest, NegotiatesAtLeastTheMinimumVersion) {
  std::string version = client_->api_version();
  size_t dot = version.find('.');
  ASSERT_NE(dot, std::string::npos) << version;
  int major = 0;
  int minor = 0;
  ASSERT_TRUE(absl::SimpleAtoi(version.substr(0, dot), &major));
  ASSERT_TRUE(absl::SimpleAtoi(version.substr(dot + 1), &minor));
  EXPECT_TRUE(major > 1 || (major == 1 && minor >= 41)) << version;
}

TEST_F(DockerClientTest, SeparatesStdoutAndStderrAndReportsTheExitCode) {
  std::string id = Run(Shell("exit3", "echo out; echo err >&2; exit 3"));
  ASSERT_FALSE(id.empty());
  Captured captured;
  absl::Status logs = client_->FollowLogs(id, captured.callback(), nullptr);
  ASSERT_TRUE(logs.ok()) << logs;
  EXPECT_EQ(captured.out, "out\n");
  EXPECT_EQ(captured.err, "err\n");
  absl::StatusOr<int> code = client_->WaitContainer(id, nullptr);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 3);
  absl::StatusOr<ContainerState> state = client_->InspectContainer(id);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_FALSE(state->running);
  EXPECT_EQ(state->exit_code, 3);
  EXPECT_FALSE(state->oom_killed);
  EXPECT_TRUE(client_->RemoveContainer(id, /*force=*/false).ok());
  EXPECT_EQ(client_->InspectContainer(id).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(DockerClientTest, AnOomEventIsFoundForAContainerKilledForMemory) {
  const absl::Time since = absl::Now() - absl::Minutes(1);
  ContainerSpec hungry = Shell("oom", "tail /dev/zero");
  hungry.memory_bytes = int64_t{16} << 20;
  std::string oom = Run(hungry);
  ASSERT_FALSE(oom.empty());
  absl::StatusOr<int> code = client_->WaitContainer(oom, nullptr);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 137);
  // The event may come a moment after the exit.
  absl::StatusOr<bool> seen = false;
  for (int i = 0; i < 20 && seen.ok() && !*seen; ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(100));
    seen = client_->HadOomEvent(oom, since);
  }
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_TRUE(*seen);

  // An exit of 137 that is not about memory has no such event (a SIGKILL
  // of the shell itself would not do: PID 1 of a container ignores it).
  ContainerSpec killed = Shell("killed", "exit 137");
  killed.memory_bytes = int64_t{64} << 20;
  std::string plain = Run(killed);
  ASSERT_FALSE(plain.empty());
  code = client_->WaitContainer(plain, nullptr);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 137);
  seen = client_->HadOomEvent(plain, since);
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_FALSE(*seen);
}

TEST_F(DockerClientTest, LargeOutputArrivesComplete) {
  constexpr size_t kBytes = size_t{20} << 20;
  std::string id =
      Run(Shell("large", absl::StrCat("yes 0123456789abcdef | head -c ", kBytes,
                                      "; echo done >&2")));
  ASSERT_FALSE(id.empty());
  Captured captured;
  captured.out.reserve(kBytes);
  absl::Status logs = client_->FollowLogs(id, captured.callback(), nullptr);
  ASSERT_TRUE(logs.ok()) << logs;
  ASSERT_EQ(captured.out.size(), kBytes);
  const std::string line = "0123456789abcdef\n";
  for (size_t i = 0; i < kBytes; i += line.size()) {
    if (captured.out.compare(i, line.size(), line, 0,
                             std::min(line.size(), kBytes - i)) != 0) {
      FAIL() << "corrupt output at byte " << i;
    }
  }
  EXPECT_EQ(captured.err, "done\n");
  absl::StatusOr<int> code = client_->WaitContainer(id, nullptr);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
}

TEST_F(DockerClientTest, StopPredicateAbandonsLogsAndWait) {
  std::string id = Run(Shell("sleeper", "echo started; sleep 300"));
  ASSERT_FALSE(id.empty());
  for (int call = 0; call < 2; ++call) {
    const absl::Time stop_at = absl::Now() + absl::Milliseconds(300);
    StopPredicate stop = [&] { return absl::Now() >= stop_at; };
    absl::Status status;
    Captured captured;
    if (call == 0) {
      status = client_->FollowLogs(id, captured.callback(), stop);
    } else {
      status = client_->WaitContainer(id, stop).status();
    }
    const absl::Duration late = absl::Now() - stop_at;
    EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
    EXPECT_LT(late, absl::Seconds(3)) << (call == 0 ? "logs" : "wait");
    if (call == 0) {
      EXPECT_EQ(captured.out, "started\n");
    }
  }
  absl::StatusOr<ContainerState> state = client_->InspectContainer(id);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_TRUE(state->running);
  // Busybox sh as PID 1 ignores SIGTERM: stop escalates to SIGKILL.
  const absl::Time start = absl::Now();
  absl::Status stopped = client_->StopContainer(id, absl::Seconds(1));
  EXPECT_TRUE(stopped.ok()) << stopped;
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  absl::StatusOr<int> code = client_->WaitContainer(id, nullptr);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 137);
  EXPECT_TRUE(client_->StopContainer(id, absl::Seconds(1)).ok())
      << "stopping a stopped container is not an error";
  EXPECT_EQ(client_->KillContainer(id).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(DockerClientTest, KillEndsAContainer) {
  std::string id = Run(Shell("killed", "sleep 300"));
  ASSERT_FALSE(id.empty());
  absl::Status killed = client_->KillContainer(id);
  ASSERT_TRUE(killed.ok()) << killed;
  absl::StatusOr<int> code = client_->WaitContainer(id, nullptr);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 137);
}

TEST_F(DockerClientTest, ExecRunsInARunningContainer) {
  ContainerSpec spec = Shell("exec", "sleep 300");
  spec.env = {"FOO=container"};
  std::string id = Run(spec);
  ASSERT_FALSE(id.empty());

  DockerClient::ExecSpec exec;
  exec.cmd = {"/bin/sh", "-c", "echo $FOO; pwd; id -u; echo e >&2; exit 7"};
  exec.env = {"FOO=exec"};
  exec.working_dir = "/tmp";
  exec.user = "1234";
  Captured captured;
  absl::StatusOr<int> code =
      client_->Exec(id, exec, captured.callback(), nullptr);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 7);
  EXPECT_EQ(captured.out, "exec\n/tmp\n1234\n");
  EXPECT_EQ(captured.err, "e\n");

  // Several in a row reuse the client's connections.
  for (int i = 0; i < 3; ++i) {
    Captured again;
    exec = {};
    exec.cmd = {"/bin/echo", absl::StrCat("run ", i)};
    code = client_->Exec(id, exec, again.callback(), nullptr);
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, 0);
    EXPECT_EQ(again.out, absl::StrCat("run ", i, "\n"));
  }

  // A stop predicate abandons a long exec.
  exec = {};
  exec.cmd = {"/bin/sleep", "300"};
  const absl::Time stop_at = absl::Now() + absl::Milliseconds(300);
  Captured ignored;
  code = client_->Exec(id, exec, ignored.callback(),
                       [&] { return absl::Now() >= stop_at; });
  EXPECT_EQ(code.status().code(), absl::StatusCode::kCancelled)
      << code.status();
  EXPECT_LT(absl::Now() - stop_at, absl::Seconds(3));

  // Not in a stopped container.
  ASSERT_TRUE(client_->KillContainer(id).ok());
  ASSERT_TRUE(client_->WaitContainer(id, nullptr).ok());
  exec.cmd = {"/bin/true"};
  code = client_->Exec(id, exec, ignored.callback(), nullptr);
  EXPECT_EQ(code.status().code(), absl::StatusCode::kFailedPrecondition)
      << code.status();
}

TEST_F(DockerClientTest, NetworksAndVolumesByLabel) {
  const std::string label = absl::StrCat(kRunLabelKey, "=", run_);
  const std::string network = Name("net");
  ASSERT_TRUE(client_->CreateNetwork(network, Labels()).ok());
  EXPECT_EQ(client_->CreateNetwork(network, Labels()).code(),
            absl::StatusCode::kAlreadyExists);
  absl::StatusOr<std::vector<std::string>> networks =
      client_->ListNetworks(label);
  ASSERT_TRUE(networks.ok()) << networks.status();
  ASSERT_EQ(networks->size(), 1u);
  absl::StatusOr<std::vector<std::string>> by_shared_label =
      client_->ListNetworks(absl::StrCat(kLabelKey, "=", kLabelValue));
  ASSERT_TRUE(by_shared_label.ok());
  EXPECT_THAT(*by_shared_label, Contains((*networks)[0]));

  const std::string volume = Name("vol");
  ASSERT_TRUE(client_->CreateVolume(volume, Labels()).ok());
  absl::StatusOr<std::vector<std::string>> volumes =
      client_->ListVolumes(label);
  ASSERT_TRUE(volumes.ok()) << volumes.status();
  EXPECT_EQ(*volumes, std::vector<std::string>{volume});

  // A container on the network answers to its alias.
  ContainerSpec spec = Shell("aliased", "sleep 300");
  spec.network = network;
  spec.aliases = {"db-alias"};
  std::string server = Run(spec);
  ASSERT_FALSE(server.empty());
  ContainerSpec probe =
      Shell("probe", "nslookup db-alias >/dev/null && echo found");
  probe.network = network;
  std::string prober = Run(probe);
  ASSERT_FALSE(prober.empty());
  Captured captured;
  ASSERT_TRUE(client_->FollowLogs(prober, captured.callback(), nullptr).ok());
  EXPECT_EQ(captured.out, "found\n") << captured.err;

  // A network in use cannot go; once its containers are gone it can.
  EXPECT_FALSE(client_->RemoveNetwork(network).ok());
  ASSERT_TRUE(client_->RemoveContainer(server, true).ok());
  ASSERT_TRUE(client_->RemoveContainer(prober, true).ok());
  ASSERT_TRUE(client_->RemoveNetwork(network).ok());
  EXPECT_EQ(client_->RemoveNetwork(network).code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(client_->RemoveVolume(volume).ok());
  EXPECT_EQ(client_->RemoveVolume(volume).code(), absl::StatusCode::kNotFound);
  networks = client_->ListNetworks(label);
  ASSERT_TRUE(networks.ok());
  EXPECT_TRUE(networks->empty());
  volumes = client_->ListVolumes(label);
  ASSERT_TRUE(volumes.ok());
  EXPECT_TRUE(volumes->empty());
}

TEST_F(DockerClientTest, VolumeAndReadOnlyBindMounts) {
  const std::string volume = Name("data");
  ASSERT_TRUE(client_->CreateVolume(volume, Labels()).ok());
  bind_dir_ = absl::StrCat(::testing::TempDir(), "/docker_client_test_", run_);
  std::filesystem::create_directories(bind_dir_);
  std::ofstream(bind_dir_ + "/in.txt") << "from the host\n";

  ContainerSpec writer = Shell("writer",
                               "cat /host/in.txt; echo kept > /vol/file; "
                               "if echo no > /host/out.txt; then echo "
                               "writable; else echo read-only; fi");
  writer.mounts = {{Mount::Type::kVolume, volume, "/vol", false},
                   {Mount::Type::kBind, bind_dir_, "/host", true}};
  std::string id = Run(writer);
  ASSERT_FALSE(id.empty());
  Captured captured;
  ASSERT_TRUE(client_->FollowLogs(id, captured.callback(), nullptr).ok());
  EXPECT_EQ(captured.out, "from the host\nread-only\n") << captured.err;
  EXPECT_FALSE(std::filesystem::exists(bind_dir_ + "/out.txt"));

  // The volume outlives the container that wrote it.
  ContainerSpec reader = Shell("reader", "cat /vol/file");
  reader.mounts = {{Mount::Type::kVolume, volume, "/vol", true}};
  std::string second = Run(reader);
  ASSERT_FALSE(second.empty());
  Captured read;
  ASSERT_TRUE(client_->FollowLogs(second, read.callback(), nullptr).ok());
  EXPECT_EQ(read.out, "kept\n") << read.err;
  // In use by a container: cannot be removed.
  EXPECT_EQ(client_->RemoveVolume(volume).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(DockerClientTest, ContainerOptionsReachTheDaemon) {
  ContainerSpec spec = Shell("options",
                             "id -u; pwd; echo $A; "
                             "touch /x 2>/dev/null || echo ro-rootfs");
  spec.env = {"A=b c"};
  spec.working_dir = "/tmp";
  spec.user = "4321:4321";
  spec.read_only_rootfs = true;
  spec.cap_drop = {"ALL"};
  spec.nano_cpus = 500000000;
  spec.memory_bytes = 64 << 20;
  std::string id = Run(spec);
  ASSERT_FALSE(id.empty());
  Captured captured;
  ASSERT_TRUE(client_->FollowLogs(id, captured.callback(), nullptr).ok());
  EXPECT_EQ(captured.out, "4321\n/tmp\nb c\nro-rootfs\n") << captured.err;

  // The same name again clashes.
  EXPECT_EQ(client_->CreateContainer(spec).status().code(),
            absl::StatusCode::kAlreadyExists);
  // A running-or-not container without force: removed (it has exited).
  ASSERT_TRUE(client_->WaitContainer(id, nullptr).ok());
  EXPECT_TRUE(client_->RemoveContainer(id, false).ok());
}

TEST_F(DockerClientTest, RemovingARunningContainerNeedsForce) {
  std::string id = Run(Shell("running", "sleep 300"));
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(client_->RemoveContainer(id, false).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(client_->RemoveContainer(id, true).ok());
  absl::StatusOr<std::vector<std::string>> left =
      client_->ListContainers(absl::StrCat(kRunLabelKey, "=", run_));
  ASSERT_TRUE(left.ok()) << left.status();
  EXPECT_THAT(*left, Not(Contains(id)));
}

TEST_F(DockerClientTest, ListContainersFindsAllStates) {
  ContainerSpec spec = Shell("created", "true");
  absl::StatusOr<std::string> created = client_->CreateContainer(spec);
  ASSERT_TRUE(created.ok()) << created.status();
  std::string running = Run(Shell("listed", "sleep 300"));
  absl::StatusOr<std::vector<std::string>> ids =
      client_->ListContainers(absl::StrCat(kRunLabelKey, "=", run_));
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, Contains(*created));
  EXPECT_THAT(*ids, Contains(running));
  EXPECT_EQ(ids->size(), 2u);
}

TEST_F(DockerClientTest, ImageExists) {
  absl::StatusOr<bool> yes = client_->ImageExists(kImage);
  ASSERT_TRUE(yes.ok()) << yes.status();
  EXPECT_TRUE(*yes);
  absl::StatusOr<bool> no =
      client_->ImageExists("delegate-test/no-such-image:latest");
  ASSERT_TRUE(no.ok()) << no.status();
  EXPECT_FALSE(*no);
}

TEST_F(DockerClientTest, PullFromAnUnreachableRegistryFails) {
  RegistryAuth auth;
  auth.username = "someone";
  auth.password = "hunter2-secret";
  std::vector<std::string> progress;
  const absl::Time start = absl::Now();
  absl::Status pulled = client_->PullImage(
      "127.0.0.1:1/nothing/here:v1", &auth,
      [&](std::string_view line) { progress.emplace_back(line); });
  EXPECT_FALSE(pulled.ok());
  EXPECT_THAT(Message(pulled),
              HasSubstr("pull image 127.0.0.1:1/nothing/here:v1"));
  EXPECT_THAT(Message(pulled), HasSubstr("127.0.0.1:1"));
  EXPECT_THAT(Message(pulled), Not(HasSubstr("hunter2")));
  EXPECT_LT(absl::Now() - start, absl::Seconds(60));
  // Without auth too.
  pulled = client_->PullImage("127.0.0.1:1/nothing", nullptr, nullptr);
  EXPECT_FALSE(pulled.ok());
  EXPECT_THAT(Message(pulled), HasSubstr("127.0.0.1:1"));
}

TEST_F(DockerClientTest, DaemonErrorsCarryItsMessage) {
  absl::StatusOr<ContainerState> state =
      client_->InspectContainer("libdelegate-no-such-container");
  EXPECT_EQ(state.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(state.status()), HasSubstr("No such container"));
  ContainerSpec spec = Shell("noimage", "true");
  spec.image = "delegate-test/no-such-image:latest";
  EXPECT_EQ(client_->CreateContainer(spec).status().code(),
            absl::StatusCode::kNotFound);
  Captured captured;
  EXPECT_EQ(client_
                ->FollowLogs("libdelegate-no-such-container",
                             captured.callback(), nullptr)
                .code(),
            absl::StatusCode::kNotFound);
}

TEST_F(DockerClientTest, ConcurrentCallsOnOneClient) {
  std::string id = Run(Shell("concurrent", "sleep 300"));
  ASSERT_FALSE(id.empty());
  // A wait blocks on one connection while other calls go on.
  std::atomic<bool> stop{false};
  absl::StatusOr<int> waited = 0;
  std::thread waiter([&] {
    waited = client_->WaitContainer(id, [&] { return stop.load(); });
  });
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<ContainerState> state = client_->InspectContainer(id);
    EXPECT_TRUE(state.ok() && state->running) << state.status();
  }
  absl::Status killed = client_->KillContainer(id);
  EXPECT_TRUE(killed.ok()) << killed;
  if (!killed.ok()) stop = true;
  waiter.join();
  ASSERT_TRUE(waited.ok()) << waited.status();
  EXPECT_EQ(*waited, 137);
}

}  // namespace
}  // namespace delegate::docker
