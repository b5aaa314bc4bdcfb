// Host steps with real processes: the scheduler and the host executor as an
// embedding program would use them.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "aws/credentials.h"
#include "delegate/builtin_executors.h"
#include "delegate/scheduler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/process_probe.h"
#include "tests/fakes/recording_log_sink.h"

namespace delegate {
namespace {

namespace fs = std::filesystem;
using ::delegate::testing::RecordingLogSink;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

// Counts bytes and lines without keeping them.
class CountingSink final : public LogSink {
 public:
  void Append(const LogLine& line) override {
    absl::MutexLock lock(&mu_);
    bytes_ += line.text.size();
    ++lines_;
    max_line_ = std::max(max_line_, line.text.size());
  }
  size_t bytes() {
    absl::MutexLock lock(&mu_);
    return bytes_;
  }
  size_t lines() {
    absl::MutexLock lock(&mu_);
    return lines_;
  }
  size_t max_line() {
    absl::MutexLock lock(&mu_);
    return max_line_;
  }

 private:
  absl::Mutex mu_;
  size_t bytes_ = 0, lines_ = 0, max_line_ = 0;
};

// Peak resident memory of this process since the last ResetPeak().
int64_t PeakRssKiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmHWM:")) {
      int64_t kib = 0;
      std::vector<std::string> parts =
          absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kib)) return kib;
    }
  }
  return -1;
}
void ResetPeak() { std::ofstream("/proc/self/clear_refs") << "5"; }

class HostStepsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    workdir_ = ::testing::TempDir() + "/host-steps-" + std::to_string(getpid());
    fs::create_directories(workdir_);
    HostExecutorOptions options;
    options.workdir = workdir_;
    options.grace_period = absl::Seconds(2);
    ASSERT_TRUE(RegisterHostExecutor(registry_, options).ok());
  }
  void TearDown() override { fs::remove_all(workdir_); }

  // A scheduler whose stages (submitted with Submit) write to `sink`.
  std::unique_ptr<Scheduler> Make(LogSink& sink) {
    lines_ = &sink;
    SchedulerOptions options;
    options.registry = &registry_;
    return std::make_unique<Scheduler>(options);
  }

  std::future<StageResult> Submit(Scheduler& scheduler, const std::string& id,
                                  Stage stage) {
    auto done = std::make_shared<std::promise<StageResult>>();
    StageTask task;
    task.id = id;
    task.stage = std::move(stage);
    task.observer = ObserveWith(
        {.done = [done](const StageResult& r) { done->set_value(r); },
         .log = lines_});
    EXPECT_TRUE(scheduler.Submit(std::move(task)).ok());
    return done->get_future();
  }

  static Stage Commands(std::vector<std::vector<std::string>> steps) {
    Stage stage;
    stage.name = "it";
    for (size_t i = 0; i < steps.size(); ++i) {
      Step step;
      step.id = "s" + std::to_string(i);
      step.commands = std::move(steps[i]);
      stage.steps.push_back(std::move(step));
    }
    return stage;
  }

  // Stage directories left under the work dir.
  size_t Leftovers() {
    size_t n = 0;
    for (auto& e : fs::directory_iterator(workdir_)) {
      (void)e;
      ++n;
    }
    return n;
  }

  std::string workdir_;
  ExecutorRegistry registry_;
  LogSink* lines_ = nullptr;
};

TEST_F(HostStepsTest, RunsStepsInOneWorkspaceAndReturnsOutputs) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  Stage stage = Commands({{"echo hello > greeting", "echo out; echo err >&2"},
                          {"cat greeting", "echo VERSION=1.2 >> $DRONE_OUTPUT",
                           "echo OTHER=x >> $HARNESS_OUTPUT_FILE"}});
  stage.steps[1].outputs = {"VERSION", "MISSING"};
  StageResult r = Submit(*scheduler, "t", stage).get();
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_EQ(r.steps[1].outputs,
            (std::map<std::string, std::string>{{"VERSION", "1.2"}}));
  EXPECT_THAT(sink.TextOf("s0"), Contains("out"));
  EXPECT_THAT(sink.TextOf("s0"), Contains("err"));
  EXPECT_THAT(sink.TextOf("s1"), Contains("hello"));
  EXPECT_THAT(sink.TextOf("s1"), Contains("+ cat greeting"));
  EXPECT_THAT(sink.TextOf("s1"),
              Contains(HasSubstr("output MISSING was declared but not")));
  EXPECT_EQ(Leftovers(), 0u) << "the stage directory outlived cleanup";
}

TEST_F(HostStepsTest, RelativeWorkdirOfAnEmbedderStillRunsSteps) {
  // A second registry, whose host workdir is relative to the current
  // directory; steps run in their workspace, elsewhere.
  const std::string relative =
      fs::relative(workdir_, fs::current_path()).string();
  ASSERT_FALSE(fs::path(relative).is_absolute());
  ExecutorRegistry registry;
  HostExecutorOptions options;
  options.workdir = relative;
  ASSERT_TRUE(RegisterHostExecutor(registry, options).ok());
  SchedulerOptions sched;
  sched.registry = &registry;
  Scheduler scheduler(sched);
  RecordingLogSink sink;
  lines_ = &sink;
  Stage stage =
      Commands({{"mkdir -p d && cd d", "echo V=1 >> $HARNESS_OUTPUT_FILE"}});
  stage.steps[0].outputs = {"V"};
  StageResult r = Submit(scheduler, "t", stage).get();
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_EQ(r.steps[0].outputs.at("V"), "1");
}

TEST_F(HostStepsTest, StopsAtTheFirstFailingCommand) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  StageResult r =
      Submit(*scheduler, "t",
             Commands({{"echo one", "exit 4", "echo never"}, {"echo two"}}))
          .get();
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_EQ(r.steps[0].exit_code, 4);
  EXPECT_EQ(r.steps[0].error, "exit status 4");
  EXPECT_EQ(r.steps[1].status, StepStatus::kSkipped);
  EXPECT_THAT(sink.TextOf("s0"), Not(Contains("never")));
}

TEST_F(HostStepsTest, TimeoutKillsForkedChildrenSoNoneSurvive) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  const std::string pids = workdir_ + "/pids";
  Stage stage = Commands({{
      // Children that ignore SIGTERM, a grandchild, and a background job.
      "(trap '' TERM; sleep 300) & echo $! >> " + pids,
      "(sh -c 'sleep 300 & echo $! >> " + pids + "; wait') & echo $! >> " +
          pids,
      "sleep 300",
  }});
  stage.steps[0].timeout = absl::Milliseconds(500);
  StageResult r = Submit(*scheduler, "t", stage).get();
  EXPECT_EQ(r.steps[0].status, StepStatus::kTimeout);
  std::vector<pid_t> children = testing::PidsIn(pids);
  ASSERT_EQ(children.size(), 3u);
  for (pid_t pid : children)
    EXPECT_FALSE(testing::Running(pid)) << pid << " survived";
}

TEST_F(HostStepsTest, BackgroundProcessesDoNotOutliveASuccessfulStep) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  const std::string pids = workdir_ + "/bg";
  StageResult r =
      Submit(*scheduler, "t",
             Commands({{"sleep 300 & echo $! > " + pids, "echo started"}}))
          .get();
  EXPECT_EQ(r.status, StepStatus::kSuccess);
  pid_t pid = 0;
  std::ifstream(pids) >> pid;
  ASSERT_GT(pid, 0);
  EXPECT_FALSE(testing::Running(pid));
}

TEST_F(HostStepsTest, ProcessesThatLeftTheStepsGroupDoNotOutliveIt) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  const std::string pids = workdir_ + "/detached";
  // A new session, and a double fork whose middle process exits at once so
  // that its child is re-parented; neither is in the step's process group.
  StageResult r =
      Submit(*scheduler, "t",
             Commands({{"setsid sleep 302 & echo $! >> " + pids,
                        "sh -c 'setsid sleep 303 & echo $! >> " + pids + "'",
                        "sh -c '(trap \"\" TERM HUP; exec sleep 304) & echo "
                        "$! >> " +
                            pids + "'",
                        "echo started"}}))
          .get();
  EXPECT_EQ(r.status, StepStatus::kSuccess) << sink.All();
  std::vector<pid_t> detached = testing::PidsIn(pids);
  ASSERT_EQ(detached.size(), 3u);
  for (pid_t pid : detached)
    EXPECT_FALSE(testing::Running(pid)) << pid << " survived";
}

TEST_F(HostStepsTest, AStepKilledBySignalIsReportedWithThatSignal) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  StageResult r =
      Submit(*scheduler, "t", Commands({{"echo before", "kill -USR1 $$"}}))
          .get();
  ASSERT_EQ(r.steps.size(), 1u);
  EXPECT_EQ(r.steps[0].status, StepStatus::kFailure);
  EXPECT_THAT(r.steps[0].error, HasSubstr("signal")) << r.steps[0].error;
  EXPECT_THAT(r.steps[0].error, HasSubstr("SIGUSR1")) << r.steps[0].error;
}

TEST_F(HostStepsTest, CancelDuringAStepStopsItAndCleansUp) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  auto f = Submit(*scheduler, "t",
                  Commands({{"echo running", "sleep 300"}, {"echo never"}}));
  for (int i = 0; i < 5000 && !absl::StrContains(sink.All(), "running"); ++i) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  const absl::Time asked = absl::Now();
  ASSERT_TRUE(scheduler->Cancel("t").ok());
  StageResult r = f.get();
  EXPECT_LT(absl::Now() - asked, absl::Seconds(10)) << "cancel was not prompt";
  EXPECT_EQ(r.status, StepStatus::kCancelled);
  EXPECT_EQ(r.steps[0].status, StepStatus::kCancelled);
  EXPECT_EQ(r.steps[1].status, StepStatus::kSkipped);
  EXPECT_EQ(Leftovers(), 0u);
}

TEST_F(HostStepsTest, HundredMegabytesOfOutputKeepMemoryBounded) {
  CountingSink sink;
  auto scheduler = Make(sink);
  // 100 MiB: 1,600 lines of 64 KiB - 1 and a newline, then one 1 MiB line.
  Stage stage = Commands({{
      "head -c 104857600 /dev/zero | tr '\\0' 'x' | fold -w 65535",
      "head -c 1048576 /dev/zero | tr '\\0' 'y'; echo",
  }});
  ResetPeak();
  const int64_t before = PeakRssKiB();
  StageResult r = Submit(*scheduler, "t", stage).get();
  const int64_t peak = PeakRssKiB();
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  EXPECT_GE(sink.bytes(), 104857600u + 1048576u);
  EXPECT_LE(sink.max_line(), 64u * 1024u) << "a line beyond the cap";
#if !defined(__SANITIZE_ADDRESS__)
  ASSERT_GT(before, 0);
  EXPECT_LT(peak - before, 32 * 1024)
      << "peak RSS grew by " << (peak - before) << " KiB";
#endif
}

TEST_F(HostStepsTest, SecretsAreMaskedInRealOutputIncludingEncodedForms) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  Stage stage = Commands({{
      "echo \"plain $TOKEN\"",
      "printf '%s' \"$TOKEN\" | base64",
      "printf 'split %s' \"${TOKEN%????}\"; sleep 0.1; printf '%s\\n' "
      "\"${TOKEN#${TOKEN%????}}\"",
  }});
  stage.secrets["T"] = "sup3r-s3cret-value";
  stage.steps[0].envs["TOKEN"] = "${{secrets.T}}";
  StageResult r = Submit(*scheduler, "t", stage).get();
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  const std::string all = sink.All();
  EXPECT_THAT(all, HasSubstr("plain **************"));
  EXPECT_THAT(all, HasSubstr("split **************"));
  EXPECT_THAT(all, Not(HasSubstr("s3cret")));
  EXPECT_THAT(all, Not(HasSubstr("c3VwM3ItczNjcmV0LXZhbHVl")));  // base64
}

TEST_F(HostStepsTest, RoleCredentialsTheDelegateFetchedAreMaskedInLaterStages) {
  // As the ECS executor gets them from the container credentials endpoint;
  // a step beside the delegate can fetch the same ones and print them.
  aws::RefreshingCredentialsProvider role(
      [] {
        aws::TimedCredentials fetched;
        fetched.credentials.access_key_id = "ASIAHOSTSTEPSTEST";
        fetched.credentials.secret_access_key =
            SecretString("role-secret-fetched-at-run-time");
        fetched.credentials.session_token =
            SecretString("role-session-token-fetched-at-run-time");
        fetched.expiration = absl::Now() + absl::Hours(6);
        fetched.source = "container credentials endpoint";
        return absl::StatusOr<aws::TimedCredentials>(fetched);
      },
      Clock::Real());
  ASSERT_TRUE(role.Get().ok());

  RecordingLogSink sink;
  auto scheduler = Make(sink);
  Stage stage = Commands({{
      "echo \"key role-secret-fetched-at-run-time\"",
      "printf '%s' role-session-token-fetched-at-run-time | base64",
  }});
  StageResult r = Submit(*scheduler, "t", stage).get();
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  const std::string all = sink.All();
  EXPECT_THAT(all, HasSubstr("key **************"));
  EXPECT_THAT(all, Not(HasSubstr("role-secret")));
  // base64 of the token's first 24 bytes
  EXPECT_THAT(all, Not(HasSubstr("cm9sZS1zZXNzaW9uLXRva2VuLWZldGNoZWQ")));
}

TEST_F(HostStepsTest, StagesRunConcurrentlyWithoutSharingPipes) {
  // Each stage waits until all six have started: run one by one, the first
  // would give up and fail.
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  const std::string marks = workdir_ + "/marks";
  fs::create_directories(marks);
  std::vector<std::future<StageResult>> results;
  for (int i = 0; i < 6; ++i) {
    results.push_back(Submit(
        *scheduler, "t" + std::to_string(i),
        Commands({{"touch " + marks + "/" + std::to_string(i),
                   "n=0; until [ $(ls " + marks +
                       " | wc -l) -ge 6 ]; do n=$((n+1)); [ $n -lt 600 ] || "
                       "exit 9; sleep 0.05; done",
                   "echo done"}})));
  }
  for (auto& f : results) {
    StageResult r = f.get();
    EXPECT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  }
  fs::remove_all(marks);
}

TEST_F(HostStepsTest, QuickStepsDoNotWaitOutTheDrainAfterExit) {
  // A step's pipes can close before its exit is noticed; that must not make
  // the step wait for stragglers that do not exist.
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  Stage stage;
  stage.name = "quick";
  for (int i = 0; i < 30; ++i) {
    Step step;
    step.id = "q" + std::to_string(i);
    if (i % 2 == 0) {
      step.commands = {"true"};
    } else {
      step.entrypoint = {"/bin/true"};
    }
    stage.steps.push_back(step);
  }
  StageResult r = Submit(*scheduler, "t", stage).get();
  ASSERT_EQ(r.status, StepStatus::kSuccess);
  for (const StepResult& step : r.steps) {
    EXPECT_LT(step.duration, absl::Milliseconds(1900)) << step.id;
  }
}

TEST_F(HostStepsTest, LongScriptsRunFromAFile) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  std::vector<std::string> commands;
  for (int i = 0; i < 3000; ++i) {
    commands.push_back("echo line-" + std::to_string(i));
  }
  StageResult r = Submit(*scheduler, "t", Commands({commands})).get();
  ASSERT_EQ(r.status, StepStatus::kSuccess) << StageResultToJson(r);
  std::vector<std::string> lines = sink.TextOf("s0");
  EXPECT_THAT(lines, Contains("line-0"));
  EXPECT_THAT(lines, Contains("line-2999"));
}

TEST_F(HostStepsTest, MissingEntrypointBinaryIsAClearFailure) {
  RecordingLogSink sink;
  auto scheduler = Make(sink);
  Stage stage = Commands({{}});
  stage.steps[0].entrypoint = {"/nonexistent/tool"};
  StageResult r = Submit(*scheduler, "t", stage).get();
  EXPECT_EQ(r.status, StepStatus::kFailure);
  EXPECT_THAT(r.steps[0].error, HasSubstr("/nonexistent/tool"));
}

}  // namespace
}  // namespace delegate
