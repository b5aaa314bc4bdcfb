#include "delegate/stage_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "delegate/stage.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kExampleYaml[] = R"yaml(name: build-and-test
platform: host            # host | docker | ecs-ec2 | ecs-fargate
env: {CI: "true"}
secrets: {GH_TOKEN: "s3cr3t"}          # used as ${{secrets.GH_TOKEN}}
volumes:
  - {name: cache, empty_dir: {size_mib: 1024}}
  - {name: sock, host_path: {path: /var/run/docker.sock, read_only: true}}
  - {name: shared, efs: {filesystem_id: fs-12345678, root_directory: /cache,
     transit_encryption: true, access_point_id: fsap-0123456789abcdef0, iam: true}}
steps:
  - id: compile
    name: Compile
    image: ""                          # empty: runs on the host
    commands: ["make -j2", "echo VERSION=1.2 >> $HARNESS_OUTPUT_FILE"]
    envs: {TOKEN: "${{secrets.GH_TOKEN}}"}
    working_dir: src
    timeout: 10m
    outputs: [VERSION]
    security_context: {privileged: false, read_only_root_filesystem: true,
      run_as_user: 1000, run_as_group: 1000,
      add_capability: [NET_ADMIN], drop_capability: [ALL]}
    volume_mounts: [{name: cache, path: /cache}]
    resources: {cpus: 1.5, memory_mib: 512}
)yaml";

constexpr char kExampleJson[] = R"json({
  "name": "build-and-test",
  "platform": "host",
  "env": {"CI": "true"},
  "secrets": {"GH_TOKEN": "s3cr3t"},
  "volumes": [
    {"name": "cache", "empty_dir": {"size_mib": 1024}},
    {"name": "sock", "host_path": {"path": "/var/run/docker.sock", "read_only": true}},
    {"name": "shared", "efs": {"filesystem_id": "fs-12345678", "root_directory": "/cache",
      "transit_encryption": true, "access_point_id": "fsap-0123456789abcdef0", "iam": true}}
  ],
  "steps": [
    {
      "id": "compile",
      "name": "Compile",
      "image": "",
      "commands": ["make -j2", "echo VERSION=1.2 >> $HARNESS_OUTPUT_FILE"],
      "envs": {"TOKEN": "${{secrets.GH_TOKEN}}"},
      "working_dir": "src",
      "timeout": "10m",
      "outputs": ["VERSION"],
      "security_context": {"privileged": false, "read_only_root_filesystem": true,
        "run_as_user": 1000, "run_as_group": 1000,
        "add_capability": ["NET_ADMIN"], "drop_capability": ["ALL"]},
      "volume_mounts": [{"name": "cache", "path": "/cache"}],
      "resources": {"cpus": 1.5, "memory_mib": 512}
    }
  ]
})json";

// A minimal valid stage to build bad inputs from.
std::string Minimal(const std::string& step_extra = "",
                    const std::string& stage_extra = "") {
  return absl::StrCat("name: s\n", stage_extra, "steps:\n  - id: a\n",
                      "    commands: [echo hi]\n", step_extra);
}

// The error message of a parse that must fail with InvalidArgument.
std::string ErrorOf(const std::string& content,
                    const std::string& source = "stage.yaml") {
  absl::StatusOr<Stage> stage = ParseStage(content, source);
  EXPECT_FALSE(stage.ok()) << "parsed unexpectedly:\n" << content;
  if (stage.ok()) return "";
  EXPECT_EQ(stage.status().code(), absl::StatusCode::kInvalidArgument)
      << stage.status();
  return std::string(stage.status().message());
}

// Every field, in a fixed order, so that two stages can be compared.
std::string Dump(const Stage& s) {
  std::ostringstream o;
  auto list = [&](const std::vector<std::string>& v) {
    o << "[";
    for (const std::string& x : v) o << "<" << x << ">";
    o << "]";
  };
  auto opt_int = [&](const std::optional<int64_t>& v) {
    if (v) {
      o << *v;
    } else {
      o << "unset";
    }
  };
  auto opt_bool = [&](const std::optional<bool>& v) {
    o << (v ? (*v ? "true" : "false") : "unset");
  };
  auto opt_dur = [&](const std::optional<absl::Duration>& v) {
    o << (v ? absl::FormatDuration(*v) : "unset");
  };
  o << "name=" << s.name << " platform=" << s.platform << " timeout=";
  opt_dur(s.timeout);
  o << "\nenv:";
  for (const auto& [k, v] : s.env) o << " " << k << "=" << v;
  o << "\nsecrets:";
  for (const auto& [k, v] : s.secrets) o << " " << k << "=" << v;
  for (const Volume& v : s.volumes) {
    o << "\nvolume " << v.name << ": ";
    if (const auto* e = std::get_if<EmptyDirVolume>(&v.source)) {
      o << "empty_dir size=";
      opt_int(e->size_mib);
    } else if (const auto* h = std::get_if<HostPathVolume>(&v.source)) {
      o << "host_path " << h->path << " ro=" << h->read_only;
    } else {
      const auto& f = std::get<EfsVolume>(v.source);
      o << "efs " << f.filesystem_id << " " << f.root_directory << " "
        << f.transit_encryption << " " << f.access_point_id << " " << f.iam;
    }
  }
  for (const Step& st : s.steps) {
    o << "\nstep " << st.id << " name=" << st.name << " image=" << st.image
      << " commands=";
    list(st.commands);
    o << " entrypoint=";
    list(st.entrypoint);
    o << " args=";
    list(st.args);
    o << " envs:";
    for (const auto& [k, v] : st.envs) o << " " << k << "=" << v;
    o << " wd=" << st.working_dir << " timeout=";
    opt_dur(st.timeout);
    o << " outputs=";
    list(st.outputs);
    const SecurityContext& sc = st.security_context;
    o << " sc=";
    opt_bool(sc.privileged);
    opt_bool(sc.read_only_root_filesystem);
    opt_int(sc.run_as_user);
    opt_int(sc.run_as_group);
    list(sc.add_capability);
    list(sc.drop_capability);
    o << " mounts=";
    for (const VolumeMount& m : st.volume_mounts) {
      o << m.name << ":" << m.path << ";";
    }
    o << " cpus=" << (st.resources.cpus ? *st.resources.cpus : -1) << " mem=";
    opt_int(st.resources.memory_mib);
    o << " pull=" << static_cast<int>(st.pull)
      << " coe=" << st.continue_on_error;
  }
  return o.str();
}

void ExpectExample(const Stage& s) {
  EXPECT_EQ(s.name, "build-and-test");
  EXPECT_EQ(s.platform, "host");
  EXPECT_EQ(s.env, (std::map<std::string, std::string>{{"CI", "true"}}));
  EXPECT_EQ(s.secrets,
            (std::map<std::string, std::string>{{"GH_TOKEN", "s3cr3t"}}));
  EXPECT_FALSE(s.timeout.has_value());
  ASSERT_EQ(s.volumes.size(), 3u);
  EXPECT_EQ(s.volumes[0].name, "cache");
  ASSERT_TRUE(std::holds_alternative<EmptyDirVolume>(s.volumes[0].source));
  EXPECT_EQ(std::get<EmptyDirVolume>(s.volumes[0].source).size_mib, 1024);
  EXPECT_EQ(s.volumes[1].name, "sock");
  ASSERT_TRUE(std::holds_alternative<HostPathVolume>(s.volumes[1].source));
  EXPECT_EQ(std::get<HostPathVolume>(s.volumes[1].source).path,
            "/var/run/docker.sock");
  EXPECT_TRUE(std::get<HostPathVolume>(s.volumes[1].source).read_only);
  EXPECT_EQ(s.volumes[2].name, "shared");
  ASSERT_TRUE(std::holds_alternative<EfsVolume>(s.volumes[2].source));
  const EfsVolume& efs = std::get<EfsVolume>(s.volumes[2].source);
  EXPECT_EQ(efs.filesystem_id, "fs-12345678");
  EXPECT_EQ(efs.root_directory, "/cache");
  EXPECT_TRUE(efs.transit_encryption);
  EXPECT_EQ(efs.access_point_id, "fsap-0123456789abcdef0");
  EXPECT_TRUE(efs.iam);

  ASSERT_EQ(s.steps.size(), 1u);
  const Step& st = s.steps[0];
  EXPECT_EQ(st.id, "compile");
  EXPECT_EQ(st.name, "Compile");
  EXPECT_EQ(st.image, "");
  EXPECT_EQ(st.commands,
            (std::vector<std::string>{
                "make -j2", "echo VERSION=1.2 >> $HARNESS_OUTPUT_FILE"}));
  EXPECT_TRUE(st.entrypoint.empty());
  EXPECT_TRUE(st.args.empty());
  // Not substituted: the scheduler does that.
  EXPECT_EQ(
      st.envs,
      (std::map<std::string, std::string>{{"TOKEN", "${{secrets.GH_TOKEN}}"}}));
  EXPECT_EQ(st.working_dir, "src");
  EXPECT_EQ(st.timeout, absl::Minutes(10));
  EXPECT_EQ(st.outputs, std::vector<std::string>{"VERSION"});
  EXPECT_EQ(st.security_context.privileged, false);
  EXPECT_EQ(st.security_context.read_only_root_filesystem, true);
  EXPECT_EQ(st.security_context.run_as_user, 1000);
  EXPECT_EQ(st.security_context.run_as_group, 1000);
  EXPECT_EQ(st.security_context.add_capability,
            std::vector<std::string>{"NET_ADMIN"});
  EXPECT_EQ(st.security_context.drop_capability,
            std::vector<std::string>{"ALL"});
  ASSERT_EQ(st.volume_mounts.size(), 1u);
  EXPECT_EQ(st.volume_mounts[0].name, "cache");
  EXPECT_EQ(st.volume_mounts[0].path, "/cache");
  EXPECT_EQ(st.resources.cpus, 1.5);
  EXPECT_EQ(st.resources.memory_mib, 512);
  EXPECT_EQ(st.pull, PullPolicy::kDefault);
  EXPECT_FALSE(st.continue_on_error);
}

// ------------------------------------------------------------ valid input

TEST(ParseStageTest, ExampleYamlParses) {
  absl::StatusOr<Stage> stage = ParseStage(kExampleYaml, "stage.yaml");
  ASSERT_TRUE(stage.ok()) << stage.status();
  ExpectExample(*stage);
}

TEST(ParseStageTest, ExampleJsonParsesToTheSameStage) {
  absl::StatusOr<Stage> yaml = ParseStage(kExampleYaml, "stage.yaml");
  absl::StatusOr<Stage> json = ParseStage(kExampleJson, "stage.json");
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  ASSERT_TRUE(json.ok()) << json.status();
  ExpectExample(*json);
  EXPECT_EQ(Dump(*yaml), Dump(*json));
}

TEST(ParseStageTest, FormatIsChosenByContentNotName) {
  // JSON under a .yaml name, YAML under a .json name.
  EXPECT_TRUE(ParseStage(kExampleJson, "x.yaml").ok());
  EXPECT_TRUE(ParseStage(kExampleYaml, "x.json").ok());
  EXPECT_TRUE(ParseStage(absl::StrCat("\n\t  ", kExampleJson)).ok());
}

TEST(ParseStageTest, DefaultsAndAlternativeSpellings) {
  absl::StatusOr<Stage> stage = ParseStage(R"(
name: s
env: {A: true, B: 1, C: 1.50, D: "x"}
timeout: 1h30m
steps:
  - id: a.b-c_1
    entrypoint: /bin/tool
    args: [--flag, 2]
    pull: IfNotPresent
    continue_on_error: True
    security_context: {add_capability: [CAP_SYS_ADMIN]}
  - id: b
    image: 1.2
    commands: [make]
    pull: if_not_present
    timeout: 500ms
  - id: c
    commands: [make]
    pull: Always
    resources: {cpus: 2}
  - id: d
    commands: [make]
    pull: never
    working_dir: ~
    timeout: null
    name:
)");
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_EQ(stage->platform, "host");
  EXPECT_EQ(stage->timeout, absl::Minutes(90));
  EXPECT_EQ(stage->env,
            (std::map<std::string, std::string>{
                {"A", "true"}, {"B", "1"}, {"C", "1.50"}, {"D", "x"}}));
  ASSERT_EQ(stage->steps.size(), 4u);
  const Step& a = stage->steps[0];
  EXPECT_EQ(a.name, "a.b-c_1");  // defaults to the id
  EXPECT_EQ(a.entrypoint, std::vector<std::string>{"/bin/tool"});
  EXPECT_EQ(a.args, (std::vector<std::string>{"--flag", "2"}));
  EXPECT_EQ(a.pull, PullPolicy::kIfNotPresent);
  EXPECT_TRUE(a.continue_on_error);
  EXPECT_EQ(a.security_context.add_capability,
            std::vector<std::string>{"SYS_ADMIN"});
  EXPECT_EQ(stage->steps[1].image, "1.2");
  EXPECT_EQ(stage->steps[1].pull, PullPolicy::kIfNotPresent);
  EXPECT_EQ(stage->steps[1].timeout, absl::Milliseconds(500));
  EXPECT_EQ(stage->steps[2].pull, PullPolicy::kAlways);
  EXPECT_EQ(stage->steps[2].resources.cpus, 2.0);
  EXPECT_EQ(stage->steps[3].pull, PullPolicy::kNever);
  EXPECT_EQ(stage->steps[3].name, "d");
  EXPECT_FALSE(stage->steps[3].timeout.has_value());
  EXPECT_TRUE(stage->steps[3].security_context.empty());
}

TEST(ParseStageTest, CustomPlatformNamesAreAccepted) {
  absl::StatusOr<Stage> stage =
      ParseStage(Minimal("", "platform: my-executor_2\n"));
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_EQ(stage->platform, "my-executor_2");
  EXPECT_THAT(ErrorOf(Minimal("", "platform: Docker\n")),
              HasSubstr("stage.yaml:2:11: platform: expected a platform name"));
}

TEST(ParseStageTest, DelegateTagsAreAListOfStrings) {
  absl::StatusOr<Stage> stage =
      ParseStage(Minimal("", "tags: [linux, gpu]\n"));
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_THAT(stage->tags, ElementsAre("linux", "gpu"));
  EXPECT_THAT(ErrorOf(Minimal("", "tags: linux\n")),
              HasSubstr("tags: expected a list of strings"));
}

TEST(ParseStageTest, SecretReferenceWithSpacesIsAccepted) {
  absl::StatusOr<Stage> stage = ParseStage(
      "name: s\nsecrets: {T: v}\nenv: {A: '${{ secrets.T }}'}\nsteps:\n"
      "  - {id: a, entrypoint: ['${{secrets.T}}'], args: ['x${{ secrets.T}}y']}"
      "\n");
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_EQ(stage->env.at("A"), "${{ secrets.T }}");
}

TEST(ParseStageTest, AliasesAreExpanded) {
  absl::StatusOr<Stage> stage = ParseStage(R"(
name: s
steps:
  - id: a
    commands: &build [make, make test]
    envs: &env {X: "1"}
  - id: b
    commands: *build
    envs: *env
)");
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_EQ(stage->steps[1].commands,
            (std::vector<std::string>{"make", "make test"}));
  EXPECT_EQ(stage->steps[1].envs.at("X"), "1");
}

TEST(ParseStageTest, StandardTagsAreHonoured) {
  absl::StatusOr<Stage> stage =
      ParseStage(Minimal("    security_context: {run_as_user: !!int '7'}\n"));
  ASSERT_TRUE(stage.ok()) << stage.status();
  EXPECT_EQ(stage->steps[0].security_context.run_as_user, 7);
  EXPECT_THAT(
      ErrorOf(Minimal("    security_context: {run_as_user: !!str 7}\n")),
      HasSubstr("run_as_user: expected an integer >= 0, got a string '7'"));
}

// ------------------------------------------------------------ errors

TEST(ParseStageErrorTest, EmptyAndBlankFiles) {
  for (const std::string& content :
       {std::string(), std::string("   \n\t\n"), std::string("# only\n"),
        std::string("---\n"), std::string("~\n"),
        std::string("\xEF\xBB\xBF\n")}) {
    EXPECT_EQ(ErrorOf(content),
              "stage.yaml: the file is empty: a stage needs at least name and "
              "steps")
        << content;
  }
}

TEST(ParseStageErrorTest, ErrorLineFormat) {
  EXPECT_EQ(ErrorOf(Minimal("    timeout: ten\n"), "ci/stage.yaml"),
            "ci/stage.yaml:5:14: steps[0].timeout: expected a duration like "
            "30s, 10m or 1h30m, got 'ten'");
  EXPECT_EQ(ErrorOf("name: s\n", "s.yaml"),
            "s.yaml:1:1: steps: required field is missing (a stage needs at "
            "least one step)");
}

TEST(ParseStageErrorTest, BinaryJunk) {
  EXPECT_THAT(ErrorOf(std::string("name: a\0b\nsteps: []\n", 20)),
              HasSubstr("stage.yaml:1:8: syntax error: control characters are "
                        "not allowed"));
  EXPECT_THAT(ErrorOf("name: \xff\xfe\n"),
              HasSubstr("stage.yaml:1:7: syntax error: invalid leading UTF-8 "
                        "octet"));
  EXPECT_THAT(ErrorOf(std::string("{\"name\": \"a\"}\0{}", 16)),
              HasSubstr("stage.yaml:1:14: the file contains a NUL byte"));
  EXPECT_THAT(ErrorOf("{\"name\": \"\xc3\x28\"}"),
              HasSubstr("stage.yaml:1:11: name: syntax error: Invalid encoding "
                        "in string."));
}

TEST(ParseStageErrorTest, SyntaxErrorsGivePositionAndParserText) {
  EXPECT_THAT(ErrorOf("name: s\nsteps:\n  - id: a\n    x: y: z\n"),
              HasSubstr("stage.yaml:4:9: steps[0]: syntax error: mapping "
                        "values are not allowed in this context"));
  EXPECT_THAT(ErrorOf("{\"name\": \"s\",\n \"steps\": [1,]}"),
              HasSubstr("stage.yaml:2:14: steps[1]: syntax error: Invalid "
                        "value."));
  EXPECT_THAT(ErrorOf("{\"name\": \"s\"} {}"),
              HasSubstr("syntax error: The document root must not be followed "
                        "by other values."));
}

TEST(ParseStageErrorTest, DeepNestingStopsAtSixtyFourLevels) {
  const size_t kTenMb = 10 << 20;
  struct Case {
    std::string content;
    std::string path;
  };
  std::string json_objects;
  json_objects.reserve(kTenMb);
  while (json_objects.size() < kTenMb) json_objects += "{\"a\":";
  std::vector<Case> cases = {
      {std::string(kTenMb, '['), ""},
      {json_objects, "a.a.a"},
      {absl::StrCat("x: ", std::string(kTenMb, '[')), "x[0][0]"},
      {absl::StrCat("x: ", std::string(kTenMb, '{')), "x"},
  };
  for (const Case& c : cases) {
    const auto start = std::chrono::steady_clock::now();
    const std::string error = ErrorOf(c.content);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_THAT(error, HasSubstr("nesting deeper than 64 levels"));
    EXPECT_THAT(error, HasSubstr(c.path));
    EXPECT_LT(elapsed, std::chrono::seconds(5));
  }
  // 64 levels are fine as far as nesting goes.
  const std::string ok64 =
      absl::StrCat("x: ", std::string(63, '['), std::string(63, ']'));
  EXPECT_THAT(ErrorOf(ok64), Not(HasSubstr("nesting")));
  const std::string bad65 =
      absl::StrCat("x: ", std::string(64, '['), std::string(64, ']'));
  EXPECT_THAT(ErrorOf(bad65),
              HasSubstr("stage.yaml:1:67: x[0][0][0][0][0][0][0][0][0][0][0]"));
}

TEST(ParseStageErrorTest, TooLarge) {
  std::string big = Minimal();
  big.resize((size_t{64} << 20) + 1, '\n');
  EXPECT_THAT(ErrorOf(big),
              HasSubstr("stage.yaml: the file is larger than 64 MiB"));
}

TEST(ParseStageErrorTest, MultipleDocuments) {
  EXPECT_THAT(ErrorOf(absl::StrCat(Minimal(), "---\n", Minimal())),
              HasSubstr("stage.yaml:5:1: expected one document"));
}

TEST(ParseStageErrorTest, BillionLaughsIsAnErrorNotAHang) {
  std::string doc = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 10; ++i) {
    absl::StrAppend(&doc, "a", i, ": &a", i, " [");
    for (int j = 0; j < 10; ++j) {
      absl::StrAppend(&doc, j ? ", " : "", "*a", i - 1);
    }
    absl::StrAppend(&doc, "]\n");
  }
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THAT(ErrorOf(doc), HasSubstr("more than 100000 nodes"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));

  // A huge scalar used many times: bounded by bytes, not nodes.
  std::string wide =
      absl::StrCat("a: &a '", std::string(4 << 20, 'x'), "'\nb: [");
  for (int i = 0; i < 40; ++i) absl::StrAppend(&wide, i ? ", " : "", "*a");
  absl::StrAppend(&wide, "]\n");
  EXPECT_THAT(ErrorOf(wide), HasSubstr("aliases expand to more than"));

  EXPECT_THAT(ErrorOf("a: &a [*a]\n"), HasSubstr("unknown alias '*a'"));
  EXPECT_THAT(ErrorOf("a: *nope\n"), HasSubstr("1:4: a: unknown alias"));
}

TEST(ParseStageErrorTest, UnsupportedTags) {
  EXPECT_THAT(ErrorOf(Minimal("", "platform: !custom docker\n")),
              HasSubstr("stage.yaml:2:11: platform: unsupported YAML tag "
                        "'!custom'"));
}

TEST(ParseStageErrorTest, TopLevelMustBeAMapping) {
  EXPECT_THAT(ErrorOf("- a\n- b\n"),
              HasSubstr("stage.yaml:1:1: expected a mapping with the stage's "
                        "fields (name, steps, ...) at the top level, got a "
                        "list"));
  EXPECT_THAT(ErrorOf("[1, 2]"), HasSubstr("at the top level, got a list"));
  EXPECT_THAT(ErrorOf("just text\n"),
              HasSubstr("at the top level, got 'just text'"));
  EXPECT_THAT(ErrorOf("x: 1\n[a, b]: 2\n"), HasSubstr("mapping keys must be"));
}

TEST(ParseStageErrorTest, UnknownFieldsAndSuggestions) {
  const std::string error = ErrorOf(
      "name: s\nplatfrom: host\nsteps:\n  - id: a\n    comands: [x]\n"
      "    runAsUser: 1\n    security_context: {runAsUser: 1}\n");
  EXPECT_THAT(error, HasSubstr("stage.yaml:2:1: unknown field 'platfrom' "
                               "(did you mean 'platform'?)"));
  EXPECT_THAT(error, HasSubstr("stage.yaml:5:5: steps[0]: unknown field "
                               "'comands' (did you mean 'commands'?)"));
  EXPECT_THAT(error, HasSubstr("steps[0]: unknown field 'runAsUser'; expected "
                               "one of id, name,"));
  EXPECT_THAT(error, HasSubstr("steps[0].security_context: unknown field "
                               "'runAsUser' (did you mean 'run_as_user'?)"));
}

TEST(ParseStageErrorTest, DuplicateKeysIdsAndVolumes) {
  const std::string error = ErrorOf(R"(name: s
name: t
env: {A: 1, A: 2}
volumes:
  - {name: v, empty_dir: {}}
  - {name: v, empty_dir: {}}
steps:
  - {id: compile, commands: [x]}
  - {id: compile, commands: [y]}
)");
  EXPECT_THAT(error, HasSubstr("stage.yaml:2:1: duplicate key 'name' (first "
                               "at line 1)"));
  EXPECT_THAT(error, HasSubstr("stage.yaml:3:13: env: duplicate key 'A'"));
  EXPECT_THAT(error, HasSubstr("volumes[1].name: duplicate volume name 'v' "
                               "(first at volumes[0])"));
  EXPECT_THAT(error, HasSubstr("stage.yaml:9:10: steps[1].id: duplicate step "
                               "id 'compile' (first at steps[0])"));
}

TEST(ParseStageErrorTest, RequiredFields) {
  EXPECT_THAT(ErrorOf("steps: [{commands: [x]}]\n"),
              AllOf(HasSubstr("stage.yaml:1:1: name: required field is "
                              "missing"),
                    HasSubstr("stage.yaml:1:9: steps[0].id: required field "
                              "is missing")));
  EXPECT_THAT(ErrorOf("name: ''\nsteps: []\n"),
              AllOf(HasSubstr("name: expected a non-empty string"),
                    HasSubstr("steps: a stage needs at least one step")));
  EXPECT_THAT(ErrorOf("name: s\nsteps: {id: a}\n"),
              HasSubstr("steps: expected a list of steps, got a mapping"));
}

TEST(ParseStageErrorTest, Durations) {
  for (const std::string bad : {"ten", "30", "0s", "-5s", "inf", "'0'"}) {
    EXPECT_THAT(ErrorOf(Minimal(absl::StrCat("    timeout: ", bad, "\n"))),
                HasSubstr("steps[0].timeout: expected a duration like 30s"))
        << bad;
  }
  EXPECT_THAT(ErrorOf(Minimal("", "timeout: [1]\n")),
              HasSubstr("timeout: expected a duration like 30s, 10m or "
                        "1h30m, got a list"));
}

TEST(ParseStageErrorTest, IntegersNumbersAndBooleans) {
  const std::string error = ErrorOf(
      Minimal("    security_context: {run_as_user: '1000', run_as_group: -1,\n"
              "      privileged: yes, read_only_root_filesystem: 'true'}\n"
              "    resources: {cpus: 0, memory_mib: 99999999999999999999}\n",
              "volumes: [{name: v, empty_dir: {size_mib: 0}}]\n"));
  EXPECT_THAT(error, HasSubstr("steps[0].security_context.run_as_user: "
                               "expected an integer >= 0, got a string "
                               "'1000'"));
  EXPECT_THAT(error, HasSubstr("steps[0].security_context.run_as_group: "
                               "expected an integer >= 0, got '-1'"));
  EXPECT_THAT(error, HasSubstr("steps[0].security_context.privileged: "
                               "expected true or false, got 'yes'"));
  EXPECT_THAT(error, HasSubstr("read_only_root_filesystem: expected true or "
                               "false, got a string 'true'"));
  EXPECT_THAT(error, HasSubstr("steps[0].resources.cpus: expected a positive "
                               "number"));
  EXPECT_THAT(error, HasSubstr("steps[0].resources.memory_mib: expected a "
                               "positive integer, got "
                               "'99999999999999999999' (out of range)"));
  EXPECT_THAT(error, HasSubstr("volumes[0].empty_dir.size_mib: expected a "
                               "positive integer, got '0'"));
}

TEST(ParseStageErrorTest, StringsAndLists) {
  const std::string error = ErrorOf(
      "name: {a: b}\nsteps:\n  - id: a\n    commands: make\n"
      "    image: [x]\n  - id: b\n    commands: [make, {x: y}, ~]\n"
      "    outputs: [OK, not-ok]\n");
  EXPECT_THAT(error, HasSubstr("name: expected a string, got a mapping"));
  EXPECT_THAT(error, HasSubstr("steps[0].commands: expected a list of "
                               "strings, got 'make'"));
  EXPECT_THAT(error, HasSubstr("steps[0].image: expected a string, got a "
                               "list"));
  EXPECT_THAT(error, HasSubstr("steps[1].commands[1]: expected a string, got "
                               "a mapping"));
  EXPECT_THAT(error, HasSubstr("steps[1].commands[2]: expected a string, got "
                               "null"));
  EXPECT_THAT(error, HasSubstr("steps[1].outputs[1]: expected a variable "
                               "name"));
}

TEST(ParseStageErrorTest, EnvAndSecretNames) {
  const std::string error =
      ErrorOf(Minimal("    envs: {1BAD: x, GOOD: {a: b}}\n",
                      "env: {a-b: x}\nsecrets: {'bad id': v}\n"));
  EXPECT_THAT(error, HasSubstr("env.a-b: invalid variable name"));
  EXPECT_THAT(error, HasSubstr("secrets[\"bad id\"]: invalid secret id"));
  EXPECT_THAT(error, HasSubstr("steps[0].envs.1BAD: invalid variable name"));
  EXPECT_THAT(error, HasSubstr("steps[0].envs.GOOD: expected a string, got a "
                               "mapping"));
}

TEST(ParseStageErrorTest, CommandsEntrypointAndArgs) {
  EXPECT_THAT(ErrorOf("name: s\nsteps:\n  - {id: a, commands: [x], "
                      "entrypoint: [y]}\n"),
              HasSubstr("stage.yaml:3:5: steps[0]: has both commands and "
                        "entrypoint"));
  EXPECT_THAT(ErrorOf("name: s\nsteps:\n  - {id: a}\n"),
              HasSubstr("steps[0]: needs commands, or an entrypoint"));
  EXPECT_THAT(ErrorOf("name: s\nsteps:\n  - {id: a, commands: [x], args: "
                      "[y]}\n"),
              HasSubstr("steps[0].args: args need an entrypoint"));
  EXPECT_THAT(ErrorOf("name: s\nsteps:\n  - {id: a, commands: []}\n"),
              HasSubstr("steps[0].commands: expected at least one command"));
}

TEST(ParseStageErrorTest, Volumes) {
  const std::string error = ErrorOf(R"(name: s
volumes:
  - {name: none}
  - {name: both, empty_dir: {}, host_path: {path: /x}}
  - {name: rel, host_path: {path: relative, read_only: 1}}
  - {name: e, efs: {root_directory: /x}}
  - {name: Bad_Name, empty_dir: {sizemib: 1}}
steps:
  - id: a
    commands: [x]
    volume_mounts: [{name: cach, path: /c}, {name: e}, [x]]
    security_context: {add_capability: [net_admin], drop_capability: ALL}
)");
  EXPECT_THAT(error, HasSubstr("stage.yaml:3:5: volumes[0]: no volume source; "
                               "expected exactly one of empty_dir, "
                               "host_path, efs"));
  EXPECT_THAT(error, HasSubstr("volumes[1]: has both empty_dir and "
                               "host_path"));
  EXPECT_THAT(error, HasSubstr("volumes[2].host_path.path: expected an "
                               "absolute path, got 'relative'"));
  EXPECT_THAT(error, HasSubstr("volumes[2].host_path.read_only: expected "
                               "true or false, got '1'"));
  EXPECT_THAT(error, HasSubstr("volumes[3].efs.filesystem_id: required field "
                               "is missing"));
  EXPECT_THAT(error, HasSubstr("volumes[4].name: expected a volume name"));
  EXPECT_THAT(error, HasSubstr("volumes[4].empty_dir: unknown field "
                               "'sizemib' (did you mean 'size_mib'?)"));
  EXPECT_THAT(error, HasSubstr("steps[0].volume_mounts[0].name: no volume "
                               "named 'cach' in this stage"));
  EXPECT_THAT(error, HasSubstr("steps[0].volume_mounts[1].path: required "
                               "field is missing"));
  EXPECT_THAT(error, HasSubstr("steps[0].volume_mounts[2]: expected a "
                               "mapping"));
  EXPECT_THAT(error, HasSubstr("steps[0].security_context.add_capability[0]: "
                               "expected a capability name like NET_ADMIN"));
  EXPECT_THAT(error, HasSubstr("steps[0].security_context.drop_capability: "
                               "expected a list of strings, got 'ALL'"));
}

TEST(ParseStageErrorTest, Pull) {
  EXPECT_THAT(ErrorOf(Minimal("    pull: sometimes\n")),
              HasSubstr("steps[0].pull: expected one of always, "
                        "if-not-present, never, got 'sometimes'"));
}

TEST(ParseStageErrorTest, UnknownSecretReferences) {
  const std::string error = ErrorOf(R"(name: s
secrets: {GH_TOKEN: s3cr3t, OTHER: x}
env: {A: "${{secrets.NOPE}}"}
steps:
  - id: a
    envs: {TOKEN: "${{secrets.GH_TOKN}}"}
    entrypoint: ["${{ secrets.E }}"]
    args: [ok, "${{secrets.ARG}}"]
  - id: b
    commands: ["echo ${{secrets.GH_TOKEN}} ${{ secrets.X }}"]
)");
  EXPECT_THAT(error, HasSubstr("stage.yaml:3:10: env.A: unknown secret "
                               "'NOPE'; the stage defines: GH_TOKEN, OTHER"));
  EXPECT_THAT(error, HasSubstr("steps[0].envs.TOKEN: unknown secret "
                               "'GH_TOKN'; the stage defines: GH_TOKEN"));
  EXPECT_THAT(error, HasSubstr("steps[0].entrypoint[0]: unknown secret 'E'"));
  EXPECT_THAT(error, HasSubstr("steps[0].args[1]: unknown secret 'ARG'"));
  EXPECT_THAT(error, HasSubstr("steps[1].commands[0]: unknown secret 'X'"));
  EXPECT_THAT(error, Not(HasSubstr("unknown secret 'GH_TOKEN'")));
  EXPECT_THAT(ErrorOf(Minimal("    envs: {A: '${{secrets.A}}'}\n")),
              HasSubstr("unknown secret 'A'; the stage defines no secrets"));
}

TEST(ParseStageErrorTest, SecretValuesNeverAppearInErrors) {
  const std::string secret = "hunter2-very-secret";
  const std::string error = ErrorOf(absl::StrCat(
      "name: s\nsecrets: {A: ", secret, ", B: {x: ", secret, "}}\n", secret,
      ": 1\nenv: {X: [", secret, "]}\nsteps:\n  - id: a\n",
      "    commands: [x]\n    timeout: ", secret, "\n    pull: ", secret,
      "\n    envs: {T: '${{secrets.", secret, "}}'}\n"));
  EXPECT_THAT(error, Not(HasSubstr(secret)));
  EXPECT_THAT(error, HasSubstr("steps[0].timeout: expected a duration like "
                               "30s, 10m or 1h30m, got '**************'"));
  EXPECT_THAT(error, HasSubstr("secrets.B: expected a string value, got a "
                               "mapping"));
  // A scalar where the mapping of secrets should be.
  EXPECT_THAT(ErrorOf(absl::StrCat(Minimal(), "secrets: ", secret, "\n")),
              AllOf(HasSubstr("secrets: expected a mapping of secret ids to "
                              "values, got a scalar"),
                    Not(HasSubstr(secret))));
}

TEST(ParseStageErrorTest, EveryProblemIsReportedAtOnce) {
  const std::string error = ErrorOf(R"(name: s
steps:
  - id: a
    commands: [x]
    timeout: ten
    comands: [y]
  - id: a
    commands: [z]
)");
  const std::vector<std::string> lines = absl::StrSplit(error, '\n');
  ASSERT_EQ(lines.size(), 3u) << error;
  EXPECT_THAT(lines[0], HasSubstr("stage.yaml:5:14: steps[0].timeout: "
                                  "expected a duration like 30s"));
  EXPECT_THAT(lines[1], HasSubstr("stage.yaml:6:5: steps[0]: unknown field "
                                  "'comands' (did you mean 'commands'?)"));
  EXPECT_THAT(lines[2], HasSubstr("stage.yaml:7:9: steps[1].id: duplicate "
                                  "step id 'a' (first at steps[0])"));
}

TEST(ParseStageErrorTest, ManyProblemsAreCapped) {
  std::string doc = "name: s\nsteps:\n";
  for (int i = 0; i < 300; ++i) absl::StrAppend(&doc, "  - {id: a}\n");
  const std::string error = ErrorOf(doc);
  const std::vector<std::string> lines = absl::StrSplit(error, '\n');
  EXPECT_EQ(lines.size(), 101u);
  EXPECT_THAT(lines.back(), HasSubstr("more problems"));
}

// ------------------------------------------------------------ robustness

TEST(ParseStageFuzzTest, RandomInputsNeverCrash) {
  std::mt19937 rng(20240601);
  const std::vector<std::string> tokens = {
      "{",   "}",         "[",   "]",    ":",    ",",
      "-",   " ",         "\n",  "  ",   "\"",   "'",
      "&a",  "*a",        "!",   "!!",   "#",    "---",
      "...", "|",         ">",   "?",    "name", "steps",
      "id",  "commands",  "1",   "true", "null", "\\",
      "\t",  "%YAML 1.2", "${{", "}}",   "\xff", std::string(1, '\0')};
  for (int i = 0; i < 200; ++i) {
    std::string input;
    const int length = std::uniform_int_distribution<int>(0, 400)(rng);
    const bool bytes = i % 3 == 0;
    for (int j = 0; j < length; ++j) {
      if (bytes) {
        input +=
            static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
      } else {
        input += tokens[std::uniform_int_distribution<size_t>(
            0, tokens.size() - 1)(rng)];
      }
    }
    if (i % 5 == 1) input = absl::StrCat("{", input);
    absl::StatusOr<Stage> stage = ParseStage(input, "fuzz");
    if (!stage.ok()) {
      EXPECT_EQ(stage.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_FALSE(stage.status().message().empty());
    }
  }
}

TEST(ParseStageFuzzTest, TruncationsOfTheExampleNeverCrash) {
  for (const std::string& full :
       {std::string(kExampleYaml), std::string(kExampleJson)}) {
    for (size_t n = 0; n < full.size(); ++n) {
      absl::StatusOr<Stage> stage = ParseStage(full.substr(0, n), "cut");
      if (!stage.ok()) {
        EXPECT_EQ(stage.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_THAT(std::string(stage.status().message()),
                    AllOf(HasSubstr("cut"), Not(HasSubstr("s3cr3t"))));
      }
    }
  }
}

// ------------------------------------------------------------ files

class LoadStageFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/stage_file_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const std::string& f : files_) unlink(f.c_str());
    rmdir(dir_.c_str());
  }
  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = absl::StrCat(dir_, "/", name);
    std::ofstream(path, std::ios::binary) << content;
    files_.push_back(path);
    return path;
  }
  std::string dir_;
  std::vector<std::string> files_;
};

TEST_F(LoadStageFileTest, ReadsAndNamesThePath) {
  absl::StatusOr<Stage> stage = LoadStageFile(Write("ok.yaml", kExampleYaml));
  ASSERT_TRUE(stage.ok()) << stage.status();
  ExpectExample(*stage);

  const std::string bad = Write("bad.yaml", Minimal("    timeout: ten\n"));
  absl::StatusOr<Stage> failed = LoadStageFile(bad);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(failed.status().message()),
              HasSubstr(absl::StrCat(bad, ":5:14: steps[0].timeout")));
}

TEST_F(LoadStageFileTest, Errors) {
  const std::string missing = absl::StrCat(dir_, "/missing.yaml");
  absl::StatusOr<Stage> stage = LoadStageFile(missing);
  EXPECT_EQ(stage.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(stage.status().message()), HasSubstr(missing));

  stage = LoadStageFile(dir_);
  EXPECT_EQ(stage.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(stage.status().message()), HasSubstr(dir_));

  std::string big(size_t{64} << 20, '\n');
  big += "\n";
  stage = LoadStageFile(Write("big.yaml", big));
  EXPECT_EQ(stage.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(stage.status().message()),
              HasSubstr("larger than 64 MiB"));

  if (geteuid() != 0) {  // root reads anything
    const std::string locked = Write("locked.yaml", kExampleYaml);
    chmod(locked.c_str(), 0);
    stage = LoadStageFile(locked);
    EXPECT_EQ(stage.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(std::string(stage.status().message()), HasSubstr(locked));
  }
}

}  // namespace
}  // namespace delegate
