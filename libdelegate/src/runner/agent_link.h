// The runner's side of its link to the step containers of a stage task: a
// Unix socket in the volume the task shares, to which each step container's
// `delegate-step` (apps/delegate-step) connects and says its container name.
//
// The wire format, both ways: frames of a 4-byte big-endian length (of what
// follows), a 1-byte type and the payload. Numbers in payloads are 4-byte
// big-endian; strings are a number (the length) and the bytes; a list is a
// number (the count) and its strings.
//   agent -> runner  kHello    the container name, and when the container
//                              has one, '\n' and its token (raw bytes)
//                    kStarted  u32 pid
//                    kOutput   u8 stream (1 stdout, 2 stderr), the bytes
//                    kExited   u32 exit code (-1: signalled or not started),
//                              u32 signal, string error
//   runner -> agent  kRun      list argv, list env (KEY=VALUE), string dir
//                    kSignal   u32 signal, to the step's process group
#ifndef DELEGATE_RUNNER_AGENT_LINK_H_
#define DELEGATE_RUNNER_AGENT_LINK_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace delegate::runner {

enum class FrameType : uint8_t {
  kHello = 1,
  kStarted = 2,
  kOutput = 3,
  kExited = 4,
  kRun = 16,
  kSignal = 17,
};

inline constexpr uint32_t kMaxFrameBytes = 64u << 20;

// What a step container's agent reports about the process it runs.
struct AgentEvent {
  enum class Kind { kStarted, kOutput, kExited };
  Kind kind = Kind::kOutput;
  int64_t pid = 0;    // kStarted
  int stream = 1;     // kOutput: 1 stdout, 2 stderr
  std::string data;   // kOutput
  int exit_code = 0;  // kExited: -1 when signalled or not started
  int signal = 0;     // kExited
  std::string error;  // kExited: why it did not start
};

// One step to run.
struct AgentRun {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // KEY=VALUE
  std::string working_dir;
};

// Encodes a kRun payload, and decodes the agent's frames (exposed for tests
// and the fuzzer).
std::string EncodeRun(const AgentRun& run);
absl::StatusOr<AgentEvent> DecodeAgentFrame(FrameType type,
                                            std::string_view payload);

// One connected step container. Used by one step at a time (Acquire).
class AgentConnection {
 public:
  AgentConnection(int fd, std::string name, std::string token);
  ~AgentConnection();
  AgentConnection(const AgentConnection&) = delete;
  AgentConnection& operator=(const AgentConnection&) = delete;

  const std::string& name() const { return name_; }
  const std::string& token() const { return token_; }
  absl::Status Run(const AgentRun& run);
  absl::Status Signal(int signal);
  // The next event, or DeadlineExceeded when none came within `wait`;
  // Unavailable once the agent is gone (its container stopped).
  absl::StatusOr<AgentEvent> Next(absl::Duration wait);
  bool gone() const;
  // Closes the link (the agent then kills its step and exits): for an agent
  // whose step could not be brought to an end, so that no later step gets
  // its frames.
  void Abandon();

 private:
  absl::Status Send(FrameType type, const std::string& payload);

  const int fd_;
  const std::string name_;
  const std::string token_;
  std::string buffer_;  // bytes read, not yet a whole frame
  mutable absl::Mutex mu_;
  bool gone_ ABSL_GUARDED_BY(mu_) = false;
};

// Accepts agents on a Unix socket. Thread-safe.
class AgentHub {
 public:
  // Listens at `socket_path` (made anew, mode 0666 so that steps running
  // as any user reach it).
  static absl::StatusOr<std::unique_ptr<AgentHub>> Listen(
      const std::string& socket_path);
  ~AgentHub();
  AgentHub(const AgentHub&) = delete;
  AgentHub& operator=(const AgentHub&) = delete;

  // The agent of `container` that presented `token` (any, when empty),
  // waiting up to `wait` for it to connect, for the sole use of the caller
  // until it is handed back (Release). Several connections may claim a
  // name; only the one with the token gets the step. NotFound when none is
  // connected in time; FailedPrecondition while another step uses it.
  absl::StatusOr<std::shared_ptr<AgentConnection>> Acquire(
      const std::string& container, const std::string& token,
      absl::Duration wait);
  void Release(const std::shared_ptr<AgentConnection>& agent);
  // The containers connected now, sorted.
  std::vector<std::string> Connected() const;

 private:
  AgentHub(int listener, std::string path);
  void AcceptLoop();

  const int listener_;
  const std::string path_;
  int wake_[2] = {-1, -1};  // a pipe that ends AcceptLoop
  mutable absl::Mutex mu_;
  // By container name, every connection that said it; gone ones are
  // dropped as new ones come.
  std::map<std::string, std::vector<std::shared_ptr<AgentConnection>>> agents_
      ABSL_GUARDED_BY(mu_);
  std::set<const AgentConnection*> busy_ ABSL_GUARDED_BY(mu_);
  std::thread acceptor_;
};

}  // namespace delegate::runner

#endif  // DELEGATE_RUNNER_AGENT_LINK_H_
